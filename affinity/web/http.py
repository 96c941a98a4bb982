"""HTTP helpers shared by the referral and the app servers.

This is the one place that maps errors to status codes and renders them as
``{"error": "<code>", "detail": "<sentence>"}``: no traceback ever reaches a
client, and malformed input never produces a 5xx.
"""

from __future__ import annotations

import logging
import math
import posixpath
import urllib.parse
from collections.abc import Mapping
from typing import Any

import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException

from affinity.config import Config
from affinity.models import Rejection, RequestInfo

log = logging.getLogger("affinity.web.http")

JSON = "application/json"
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

_SANIC_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    416: "range_not_satisfiable",
    417: "expectation_failed",
    431: "headers_too_large",
    503: "service_unavailable",
}


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> HTTPResponse:
    """A JSON answer serialised with orjson, with ``nosniff``."""
    merged = {**NOSNIFF, **headers} if headers else NOSNIFF
    return HTTPResponse(orjson.dumps(body), status=status, headers=merged, content_type=JSON)


def error_response(
    status: int,
    error: str,
    detail: str,
    *,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTTPResponse:
    """The error shape of the wire protocol, with ``Retry-After`` in whole seconds if given."""
    extra = dict(headers or {})
    if retry_after is not None:
        extra["Retry-After"] = str(max(1, math.ceil(retry_after)))
    extra.setdefault("Cache-Control", "no-store")
    return json_response({"error": error, "detail": detail}, status, extra)


def rejection_response(rejection: Rejection) -> HTTPResponse:
    """Render a request filter's refusal."""
    return error_response(
        rejection.status,
        rejection.error,
        rejection.detail,
        retry_after=rejection.retry_after,
        headers=rejection.headers,
    )


def exception_response(request: Request, exc: Exception) -> HTTPResponse:
    """Sanic's error handler: known HTTP errors keep their status, anything else is a bare 500."""
    if isinstance(exc, SanicException):
        status = int(exc.status_code)
        code = _SANIC_CODES.get(status, "bad_request" if status < 500 else "internal_error")
        detail = str(exc) if status < 500 else "the server failed to answer; this is logged"
        headers = dict(getattr(exc, "headers", None) or {})
        return error_response(status, code, detail, headers=headers)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "the server failed to answer; this is logged")


def normalise_path(raw: str) -> str:
    """The path the router would see: percent-decoded, dot segments and repeated slashes removed.

    Firewall rules match on this, so ``/x/../admin``, ``/%61dmin`` and
    ``//admin`` are all ``/admin``.
    """
    if "%" not in raw and "//" not in raw and "/." not in raw and "?" not in raw and raw[:1] == "/":
        return raw  # already what the router sees: the common case, kept cheap
    path = urllib.parse.unquote(raw.split("?", 1)[0], errors="replace")
    trailing = path.endswith("/") and len(path) > 1
    path = posixpath.normpath("/" + path.lstrip("/"))
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path + "/" if trailing and path != "/" else path


def request_info(
    request: Request, role: str, *, client_id: str | None = None, server_id: str | None = None
) -> RequestInfo:
    """What the request filters see of a request (the same on the referral and app servers)."""
    return RequestInfo(
        role=role,
        method=request.method,
        path=normalise_path(request.path),
        client_ip=client_ip(request),
        client_id=client_id,
        server_id=server_id,
        headers=request.headers,
    )


def trust_proxies(
    app: Sanic[Any, Any], *, count: int, real_ip_header: str, forwarded_secret: str | None
) -> None:
    """Set Sanic's proxy settings; with none set, forwarding headers are ignored.

    Also notes on ``app.ctx`` whether any is set, so that :func:`client_ip`, on
    every filtered request, reads one attribute instead of three config keys.
    """
    app.config.PROXIES_COUNT = count or None
    app.config.REAL_IP_HEADER = real_ip_header or None
    app.config.FORWARDED_SECRET = forwarded_secret or None
    app.ctx.trusted_proxy = bool(count or real_ip_header or forwarded_secret)


def new_app(name: str, config: Config, section: str) -> Sanic[Any, Any]:
    """A Sanic app set up as every affinity process wants it.

    No access log (a cost per request), JSON errors from
    :func:`exception_response`, and the proxy settings of the ``[referral]``
    or ``[server]`` section.
    """
    app: Sanic[Any, Any] = Sanic(name)
    app.config.ACCESS_LOG = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    settings = getattr(config, section)
    trust_proxies(
        app,
        count=settings.proxies_count,
        real_ip_header=settings.real_ip_header,
        forwarded_secret=config.read_secret(
            settings.forwarded_secret_file,
            "AFFINITY_FORWARDED_SECRET",
            f"{section}.forwarded_secret_file",
        ),
    )
    app.error_handler.add(Exception, exception_response)
    return app


TOKEN_HEADER = "affinity-token"
COOKIE = "affinity"


def request_token(request: Request) -> str | None:
    """The affinity token a request carries: header ``Affinity-Token``, else cookie ``affinity``."""
    token = request.headers.get(TOKEN_HEADER)
    if not token and "cookie" in request.headers:
        token = request.cookies.get(COOKIE)
    return token or None


def client_ip(request: Request) -> str:
    """The client's address: from proxy headers only when a trusted proxy is configured."""
    app = request.app
    if getattr(app.ctx, "trusted_proxy", True) and (
        app.config.PROXIES_COUNT or app.config.REAL_IP_HEADER or app.config.FORWARDED_SECRET
    ):
        forwarded = request.remote_addr
        if forwarded:
            # Sanic brackets an IPv6 "for" ("[2001:db8::1]"); filters parse plain addresses.
            return forwarded[1:-1] if forwarded[:1] == "[" else forwarded
    return request.ip or ""
