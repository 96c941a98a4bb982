"""The OpenAPI 3.1 description of the referral's HTTP API, served at ``/openapi.json``.

Every route the referral serves is here, each operation with an
``operationId`` (a test compares the spec with the app's router). The
redirect mount's path depends on ``referral.redirect_prefix``, so the spec is
made per app; ``servers`` is relative, so the spec names whichever referral
served it.
"""

from __future__ import annotations

from typing import Any

from affinity.protocol import ASSIGN_PATH, JWKS_PATH, MAX_AVOID, TOKEN_HEADER
from affinity.version import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_OBJECT = {"type": "object"}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema or _ERROR}}
    return {"description": description, "content": content}


def _op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, **extra, "responses": responses}


def _text(description: str, media: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


_UNAUTHORIZED = _answer("missing or wrong admin token")
_CLOSED = _answer(
    "no admin token is configured: the admin API is closed; or a server's registration "
    "token used on another server's id"
)
_TOO_LARGE = _answer("the body is larger than referral.max_body_size")
_ADMIN_ERRORS = {"401": _UNAUTHORIZED, "403": _CLOSED, "404": _answer("no such server")}
_SESSION_ERRORS = {
    "401": _answer("not logged in to the dashboard"),
    "403": _answer("missing or wrong CSRF header"),
    "404": _answer("no such server"),
}
_SERVER_ID = {
    "name": "server_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
}
_CSRF = {"name": "X-Affinity-CSRF", "in": "header", "required": True, "schema": {"type": "string"}}
_ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
_SESSION: list[dict[str, list[str]]] = [{"dashboard": []}]
_ASSIGN_ERRORS = {
    "400": _answer("malformed query"),
    "404": _answer("unknown service"),
    "429": _answer("rate limited"),
    "503": _answer("no healthy server"),
}

_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "admin": {"type": "http", "scheme": "bearer"},
        "dashboard": {"type": "apiKey", "in": "cookie", "name": "affinity_dashboard"},
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        },
        "Assignment": {
            "type": "object",
            "required": ["server", "token", "expires_in", "sticky"],
            "properties": {
                "server": {
                    "type": "object",
                    "required": ["id", "url"],
                    "properties": {"id": {"type": "string"}, "url": {"type": "string"}},
                },
                "token": {"type": "string"},
                "expires_in": {"type": "integer"},
                "sticky": {"type": "boolean"},
            },
        },
        "ServerRegistration": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "format": "uri"},
                "service": {"type": "string"},
                "weight": {"type": "integer", "minimum": 0, "maximum": 10000},
                "meta": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "Status": {
            "type": "object",
            "required": ["version", "time", "registry", "services", "servers", "totals"],
            "properties": {
                "version": {"type": "string"},
                "time": {"type": "number"},
                "worker": {"type": "integer"},
                "registry": _OBJECT,
                "services": _OBJECT,
                "servers": {"type": "array", "items": _OBJECT},
                "totals": _OBJECT,
            },
        },
    },
}

_STATUS = {"$ref": "#/components/schemas/Status"}


def _referral_paths(redirect_prefix: str) -> dict[str, Any]:
    prefix = redirect_prefix.rstrip("/")
    redirect = {
        "description": "307 to the chosen server with the same path and query; token as cookie",
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
    rest = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        ASSIGN_PATH: {
            "get": _op(
                "assign",
                "Choose a server for this client and sign an affinity token",
                {
                    "200": _answer("assigned", {"$ref": "#/components/schemas/Assignment"}),
                    **_ASSIGN_ERRORS,
                },
                parameters=[
                    {"name": "service", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "avoid",
                        "in": "query",
                        "style": "form",
                        "explode": True,
                        "schema": {
                            "type": "array",
                            "items": {"type": "string"},
                            "maxItems": MAX_AVOID,
                        },
                    },
                    {"name": TOKEN_HEADER, "in": "header", "schema": {"type": "string"}},
                ],
            )
        },
        prefix or "/": {
            "get": _op(
                "redirectRoot",
                "Redirect mount: send a browser to its server",
                {"307": redirect, **_ASSIGN_ERRORS},
            )
        },
        f"{prefix}/{{path}}": {
            "get": _op(
                "redirect",
                "Redirect mount: send a browser to its server, keeping the path",
                {"307": redirect, **_ASSIGN_ERRORS},
                parameters=[rest],
            )
        },
        JWKS_PATH: {
            "get": _op(
                "jwks", "Public keys for verifying tokens", {"200": _answer("JWK set", _OBJECT)}
            )
        },
        "/healthz": {
            "get": _op("healthz", "Liveness of this referral", {"200": _answer("alive", _OBJECT)})
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics, summed over this referral's workers",
                {"200": _text("text exposition format (OpenMetrics when asked)", "text/plain")},
            )
        },
        "/openapi.json": {
            "get": _op("openapi", "This document", {"200": _answer("OpenAPI 3.1", _OBJECT)})
        },
    }


def _admin_paths() -> dict[str, Any]:
    def admin(op_id: str, summary: str, ok: str, errors: dict[str, Any], **extra: Any) -> Any:
        answers = {"200": _answer(ok, _OBJECT), "401": _UNAUTHORIZED, "403": _CLOSED, **errors}
        return _op(op_id, summary, answers, security=_ADMIN, **extra)

    json_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ServerRegistration"}}
        },
    }
    settings_body = {"required": True, "content": {"application/json": {"schema": _OBJECT}}}
    name = {**_SERVER_ID, "name": "name"}  # settings names are ids too
    return {
        "/v1/status": {
            "get": _op(
                "getStatus",
                "The fleet: servers, services, and totals over all workers",
                {"200": _answer("status", _STATUS), "401": _UNAUTHORIZED, "403": _CLOSED},
                security=_ADMIN,
            )
        },
        "/v1/servers": {
            "get": admin(
                "listServers",
                "List servers with health, load and assignments",
                "servers",
                {"401": _UNAUTHORIZED},
            )
        },
        "/v1/servers/{server_id}": {
            "parameters": [_SERVER_ID],
            "get": admin("getServer", "One server", "server", _ADMIN_ERRORS),
            "put": admin(
                "putServer",
                "Register or update a server",
                "registered",
                {"400": _answer("invalid registration"), "413": _TOO_LARGE},
                requestBody=json_body,
            ),
            "delete": admin("deleteServer", "Deregister a server", "gone", _ADMIN_ERRORS),
        },
        "/v1/servers/{server_id}/drain": {
            "parameters": [_SERVER_ID],
            "post": admin(
                "drainServer", "Stop assigning new clients to a server", "draining", _ADMIN_ERRORS
            ),
        },
        "/v1/servers/{server_id}/resume": {
            "parameters": [_SERVER_ID],
            "post": admin(
                "resumeServer", "Assign clients to a drained server again", "resumed", _ADMIN_ERRORS
            ),
        },
        "/v1/settings": {
            "get": admin(
                "listSettings",
                "All shared settings; with index, a blocking query until they change",
                "documents",
                {"400": _answer("malformed index or wait"), "401": _UNAUTHORIZED},
                parameters=[
                    {"name": "index", "in": "query", "schema": {"type": "integer"}},
                    {"name": "wait", "in": "query", "schema": {"type": "number", "maximum": 60}},
                ],
            )
        },
        "/v1/settings/{name}": {
            "parameters": [name],
            "get": admin(
                "getSettings",
                "A shared settings document",
                "document",
                {"401": _UNAUTHORIZED, "404": _answer("no such document")},
            ),
            "put": admin(
                "putSettings",
                "Replace a shared settings document (validated whole)",
                "stored",
                {"400": _answer("rejected; previous version kept"), "413": _TOO_LARGE},
                requestBody=settings_body,
            ),
        },
    }


def _dashboard_paths() -> dict[str, Any]:
    html = _text("the dashboard, or the login form", "text/html")
    see_other = {"description": "to the dashboard, with the session cookie set or cleared"}
    form = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": {"token": {"type": "string"}}}
            }
        },
    }
    asset = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    logout_form = {
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": {"csrf": {"type": "string"}}}
            }
        },
    }

    def action(op_id: str, summary: str) -> dict[str, Any]:
        ok = {"200": _answer("done", _OBJECT), **_SESSION_ERRORS}
        return {
            "parameters": [_SERVER_ID],
            "post": _op(op_id, summary, ok, security=_SESSION, parameters=[_CSRF]),
        }

    return {
        "/dashboard": {
            "get": _op(
                "dashboardPage",
                "The fleet dashboard (a login form without a session)",
                {"200": html},
            )
        },
        "/dashboard/login": {
            "post": _op(
                "dashboardLogin",
                "Log in with the admin token (posted, never in a URL)",
                {
                    "303": see_other,
                    "400": _answer("not a login form"),
                    "401": html,
                    "403": _text("the dashboard is closed: no admin token", "text/html"),
                    "413": _answer("form too large"),
                },
                requestBody=form,
            )
        },
        "/dashboard/logout": {
            "post": _op(
                "dashboardLogout",
                "End this browser's session (the form carries the CSRF token)",
                {"303": see_other, "403": _answer("missing or wrong CSRF token")},
                requestBody=logout_form,
            )
        },
        "/dashboard/api/status": {
            "get": _op(
                "dashboardStatus",
                "The document of GET /v1/status, for a logged-in browser",
                {"200": _answer("status", _STATUS), "401": _SESSION_ERRORS["401"]},
                security=_SESSION,
            )
        },
        "/dashboard/api/servers/{server_id}/drain": action("dashboardDrain", "Drain a server"),
        "/dashboard/api/servers/{server_id}/resume": action("dashboardResume", "Resume a server"),
        "/dashboard/static/{name}": {
            "get": _op(
                "dashboardAsset",
                "The dashboard's script, style sheet and icon",
                {"200": {"description": "the file"}, "404": _answer("no such asset")},
                parameters=[asset],
            )
        },
    }


def openapi_spec(redirect_prefix: str) -> dict[str, Any]:
    """The spec of a referral whose redirect mount is at ``redirect_prefix``."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "affinity referral", "version": __version__},
        "servers": [{"url": "/", "description": "the referral that served this document"}],
        "components": _COMPONENTS,
        "paths": {**_referral_paths(redirect_prefix), **_admin_paths(), **_dashboard_paths()},
    }
