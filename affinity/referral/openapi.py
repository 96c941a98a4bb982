"""The OpenAPI 3.1 description of the referral's HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from affinity.protocol import ASSIGN_PATH, JWKS_PATH, MAX_AVOID, TOKEN_HEADER

_ERROR = {"$ref": "#/components/schemas/Error"}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema or _ERROR}}
    return {"description": description, "content": content}


_ADMIN_ERRORS = {
    "401": _answer("missing or wrong admin token"),
    "403": _answer("no admin token is configured: the admin API is closed"),
    "404": _answer("no such server"),
}
_SERVER_ID = {
    "name": "server_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
}
_SECURED: list[dict[str, list[str]]] = [{"admin": []}]

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "affinity referral", "version": "1"},
    "components": {
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
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
        },
    },
    "paths": {
        ASSIGN_PATH: {
            "get": {
                "summary": "Choose a server for this client and sign an affinity token",
                "parameters": [
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
                "responses": {
                    "200": _answer("assigned", {"$ref": "#/components/schemas/Assignment"}),
                    "400": _answer("malformed query"),
                    "404": _answer("unknown service"),
                    "429": _answer("rate limited"),
                    "503": _answer("no healthy server"),
                },
            }
        },
        JWKS_PATH: {
            "get": {
                "summary": "Public keys for verifying tokens",
                "responses": {"200": _answer("JWK set", {"type": "object"})},
            },
        },
        "/healthz": {
            "get": {
                "summary": "Liveness of this referral",
                "responses": {"200": _answer("alive", {"type": "object"})},
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            },
        },
        "/v1/servers": {
            "get": {
                "summary": "List servers with health, load and assignments",
                "security": _SECURED,
                "responses": {
                    "200": _answer("servers", {"type": "object"}),
                    "401": _ADMIN_ERRORS["401"],
                },
            },
        },
        "/v1/servers/{server_id}": {
            "parameters": [_SERVER_ID],
            "get": {
                "summary": "One server",
                "security": _SECURED,
                "responses": {"200": _answer("server", {"type": "object"}), **_ADMIN_ERRORS},
            },
            "put": {
                "summary": "Register or update a server",
                "security": _SECURED,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ServerRegistration"}
                        }
                    },
                },
                "responses": {
                    "200": _answer("registered", {"type": "object"}),
                    "400": _answer("invalid registration"),
                    "401": _ADMIN_ERRORS["401"],
                },
            },
            "delete": {
                "summary": "Deregister a server",
                "security": _SECURED,
                "responses": {"200": _answer("gone", {"type": "object"}), **_ADMIN_ERRORS},
            },
        },
        "/v1/servers/{server_id}/drain": {
            "parameters": [_SERVER_ID],
            "post": {
                "summary": "Stop assigning new clients to a server",
                "security": _SECURED,
                "responses": {"200": _answer("draining", {"type": "object"}), **_ADMIN_ERRORS},
            },
        },
        "/v1/servers/{server_id}/resume": {
            "parameters": [_SERVER_ID],
            "post": {
                "summary": "Assign clients to a drained server again",
                "security": _SECURED,
                "responses": {"200": _answer("resumed", {"type": "object"}), **_ADMIN_ERRORS},
            },
        },
        "/v1/settings/{name}": {
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "summary": "A shared settings document",
                "security": _SECURED,
                "responses": {
                    "200": _answer("document", {"type": "object"}),
                    "401": _ADMIN_ERRORS["401"],
                    "404": _answer("no such document"),
                },
            },
            "put": {
                "summary": "Replace a shared settings document (validated whole)",
                "security": _SECURED,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _answer("stored", {"type": "object"}),
                    "400": _answer("rejected; previous version kept"),
                    "401": _ADMIN_ERRORS["401"],
                },
            },
        },
    },
}
