"""HTTP helpers shared by the referral and the app servers.

This is the one place that maps errors to status codes (:data:`ANSWERS`) and
renders them as ``{"error": "<code>", "detail": "<sentence>"}``: request
handlers raise an :class:`affinity.errors.Refused` (or look one up with
:func:`refusal_response` on the request path), no traceback ever reaches a
client, and malformed input never produces a 5xx.
"""

from __future__ import annotations

import logging
import math
import posixpath
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from multidict import istr
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException

from affinity.config import Config
from affinity.errors import (
    AdminClosed,
    AffinityError,
    Draining,
    ExpiredToken,
    Forbidden,
    InvalidRequest,
    InvalidToken,
    Misdirected,
    NoHealthyServer,
    NotFound,
    Refused,
    RegistryError,
    TokenRequired,
    TooLarge,
    Unauthorized,
    UnknownKey,
)
from affinity.models import HealthStatus, Rejection, RequestInfo, fast_constructor
from affinity.protocol import COOKIE, REASSIGN_HEADER, TOKEN_HEADER, ErrorCode
from affinity.web.auth import BearerAuth
from affinity.web.connection import AppConfig, apply_limits
from affinity.web.response import Response, quick_header_encoding

log = logging.getLogger("affinity.web.http")
_request_info = fast_constructor(RequestInfo)  # one per filtered request
_TOKEN = istr(TOKEN_HEADER)
_COOKIE = istr("cookie")
"""Header names looked up on every request, as multidict's case-insensitive strings: a plain
``str`` key is case-folded again on each lookup, which cost about a third of the lookup."""

JSON = "application/json"
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

_FAILED = "the server failed to answer; this is logged"
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
    """A JSON answer serialised with orjson, with ``nosniff`` (a :class:`Response`: its headers
    encode cheaply)."""
    if not headers:
        merged = NOSNIFF
    elif isinstance(headers, dict) and "X-Content-Type-Options" in headers:
        merged = headers  # NO_STORE and the like: nothing to add
    else:
        merged = {**NOSNIFF, **headers}
    return Response(orjson.dumps(body), status=status, headers=merged, content_type=JSON)


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


@dataclass(frozen=True, slots=True)
class Answer:
    """How one kind of error is answered: status, ``error`` code, and what it adds.

    ``detail`` replaces the exception's message when set (a token's rejection
    says no more than "not valid"); ``retry_after`` is used when the exception
    carries none.
    """

    status: int
    code: str
    detail: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None


ANSWERS: Mapping[type[Exception], Answer] = {
    ExpiredToken: Answer(
        401, ErrorCode.TOKEN_EXPIRED, "the affinity token has expired; ask the referral again"
    ),
    UnknownKey: Answer(401, ErrorCode.INVALID_TOKEN, "the token's key is not known here"),
    InvalidToken: Answer(401, ErrorCode.INVALID_TOKEN, "the affinity token is not valid"),
    TokenRequired: Answer(401, ErrorCode.TOKEN_REQUIRED),
    Misdirected: Answer(421, ErrorCode.MISDIRECTED),
    Draining: Answer(503, ErrorCode.DRAINING, headers={REASSIGN_HEADER: "1"}),
    NoHealthyServer: Answer(503, ErrorCode.NO_HEALTHY_SERVER),
    InvalidRequest: Answer(400, ErrorCode.BAD_REQUEST),
    NotFound: Answer(404, ErrorCode.NOT_FOUND),
    Unauthorized: Answer(
        401, ErrorCode.UNAUTHORIZED, headers={"WWW-Authenticate": 'Bearer realm="affinity"'}
    ),
    AdminClosed: Answer(403, ErrorCode.ADMIN_CLOSED),
    Forbidden: Answer(403, ErrorCode.FORBIDDEN),
    TooLarge: Answer(413, ErrorCode.PAYLOAD_TOO_LARGE),
    RegistryError: Answer(503, ErrorCode.REGISTRY_UNAVAILABLE, retry_after=1.0),
}
"""Every error a request can end in, by exception type (the nearest base class counts)."""


def answer_for(exc: BaseException) -> Answer | None:
    """The row of :data:`ANSWERS` for ``exc``'s type or its nearest listed base class."""
    for kind in type(exc).__mro__:
        answer = ANSWERS.get(kind)
        if answer is not None:
            return answer
    return None


def refusal_response(exc: AffinityError) -> HTTPResponse:
    """The answer to a request that ends in ``exc``, as :data:`ANSWERS` says.

    ``exc`` must have a row there; anything else is a bug, answered 500.
    """
    answer = answer_for(exc)
    if answer is None:
        log.error("%s has no row in ANSWERS", type(exc).__name__, exc_info=exc)
        return error_response(500, ErrorCode.INTERNAL_ERROR, _FAILED)
    return _render(exc, answer)


def _render(exc: AffinityError, answer: Answer) -> HTTPResponse:
    code, retry_after = answer.code, answer.retry_after
    if isinstance(exc, Refused):
        code = exc.code or code
        if exc.retry_after is not None:
            retry_after = exc.retry_after
    return error_response(
        answer.status,
        code,
        answer.detail or str(exc),
        retry_after=retry_after,
        headers=answer.headers,
    )


HEALTH_CODES: Mapping[HealthStatus, int] = {
    HealthStatus.PASSING: 200,
    HealthStatus.WARNING: 429,
    HealthStatus.CRITICAL: 503,
    HealthStatus.MAINTENANCE: 503,
}
"""The health answer's status, the codes Consul's HTTP check maps to passing / warning /
critical; a draining server that is passing answers as warning."""


def health_code(status: HealthStatus, draining: bool) -> int:
    """The HTTP status of an app server's health answer."""
    if draining and status is HealthStatus.PASSING:
        return HEALTH_CODES[HealthStatus.WARNING]
    return HEALTH_CODES.get(status, 503)


def exception_response(request: Request, exc: Exception) -> HTTPResponse:
    """Sanic's error handler: affinity's errors as :data:`ANSWERS` says, known HTTP errors keep
    their status, anything else is a bare 500 (and logged)."""
    if isinstance(exc, AffinityError):
        answer = answer_for(exc)
        if answer is not None:
            return _render(exc, answer)
    if isinstance(exc, SanicException):
        status = int(exc.status_code)
        code = _SANIC_CODES.get(status, "bad_request" if status < 500 else "internal_error")
        detail = str(exc) if status < 500 else _FAILED
        headers = dict(getattr(exc, "headers", None) or {})
        return error_response(status, code, detail, headers=headers)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, ErrorCode.INTERNAL_ERROR, _FAILED)


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


PATH_MEMO_SIZE = 4096
"""At most this many request targets are remembered with their :func:`normalise_path`."""


class PathMemo(dict[bytes, str]):
    """The normalised path of each request target seen, remembered: the router's paths repeat.

    Keyed by the request target as it arrived (``request.raw_url``, bytes:
    the path and the query), so a hit (``memo.get(request.raw_url)``, one
    lookup) reads neither ``request.path`` (a decode per read) nor walks
    :func:`normalise_path`; a miss is :meth:`path`. Bounded: once ``size``
    targets are held, the memo is emptied and fills again, so a flood of
    distinct targets costs memory ``size`` at most and every answer stays
    exact.
    """

    __slots__ = ("size",)

    def __init__(self, size: int = PATH_MEMO_SIZE) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size!r}")
        super().__init__()
        self.size = size

    def path(self, request: Request) -> str:
        """``normalise_path(request.path)``, remembered."""
        raw: bytes = request.raw_url
        path = self.get(raw)
        if path is None:
            path = normalise_path(request.path)
            if len(self) >= self.size:
                self.clear()
            self[raw] = path
        return path


def request_info(
    request: Request, role: str, *, client_id: str | None = None, server_id: str | None = None
) -> RequestInfo:
    """What the request filters see of a request (the same on the referral and app servers).

    The app is one :func:`new_app` made (its ``ctx.paths`` is the :class:`PathMemo`).
    """
    paths: PathMemo = request.app.ctx.paths
    return _request_info(
        role=role,
        method=request.method,
        path=paths.get(request.raw_url) or paths.path(request),
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


def new_app(
    name: str,
    config: Config,
    section: str,
    *,
    on_error: Callable[[Request, Exception], Any] = exception_response,
) -> Sanic[Any, Any]:
    """A Sanic app set up as every affinity process wants it.

    Its config is an :class:`affinity.web.connection.AppConfig` (the settings Sanic reads on
    every request are plain attributes: cheaper to read). No access log (a cost per request;
    ``--access-log`` turns it on when serving), no
    logging set-up of Sanic's own (:func:`affinity.logs.configure` is the one), JSON
    errors from ``on_error``
    (:func:`exception_response`, or a role's handler that ends with it), and
    the body size and timeouts (:func:`affinity.web.connection.apply_limits`),
    the proxy settings and the admin token (``app.ctx.admin_auth``, read once)
    of the ``[referral]`` or ``[server]`` section, the memo of normalised
    paths :func:`request_info` reads (``app.ctx.paths``), and Sanic's header
    encoding without a translation per header (:func:`affinity.web.response.quick_header_encoding`).
    """
    app: Sanic[Any, Any] = Sanic(name, config=AppConfig(), configure_logging=False)
    app.config.ACCESS_LOG = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    settings = getattr(config, section)
    apply_limits(app, settings)
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
    app.ctx.admin_auth = BearerAuth.from_config(config, section)
    app.ctx.paths = PathMemo()
    quick_header_encoding()  # process-wide; the app server's workers do it again
    app.error_handler.add(Exception, on_error)
    return app


def request_token(request: Request) -> str | None:
    """The affinity token a request carries: header ``Affinity-Token``, else cookie ``affinity``."""
    headers = request.headers
    token = headers.get(_TOKEN)
    if not token and _COOKIE in headers:
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
    info = request.conn_info  # what request.ip reads, without the property's call
    return info.client_ip if info else ""
