"""The fleet dashboard at ``/dashboard``: a page, its assets, its JSON and its two actions.

Access takes the admin token, typed once into a login form and posted (never
in a URL); the answer is a signed session cookie (:mod:`affinity.referral.session`).
The page polls ``/dashboard/api/status`` (the document of ``GET /v1/status``)
and drains or resumes servers with a CSRF header. Its script, style sheet and
icon ship in the package (``affinity/referral/static``), so it works offline,
and every answer carries a Content-Security-Policy that allows scripts from
this origin only, never inline.
"""

from __future__ import annotations

import urllib.parse
from importlib import resources

from sanic import Blueprint, HTTPResponse, Request

from affinity.errors import Forbidden, InvalidRequest, NotFound, TooLarge, Unauthorized
from affinity.referral import admin
from affinity.referral.context import ReferralContext
from affinity.referral.session import COOKIE, CSRF_HEADER, Sessions
from affinity.referral.status import fleet_status
from affinity.web.http import NO_STORE, json_response

dashboard = Blueprint("affinity_dashboard", url_prefix="/dashboard")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
MAX_FORM = 4096
"""Bytes of the login form read at most (a token is far shorter)."""

_ERROR_SLOT = '<p id="login-error" class="error" hidden></p>'


def _asset(name: str) -> bytes:
    return (resources.files("affinity.referral") / "static" / name).read_bytes()


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.ctx.dashboard_sessions
    return sessions


def _page(body: bytes, status: int = 200) -> HTTPResponse:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return HTTPResponse(
        body, status=status, headers=headers, content_type="text/html; charset=utf-8"
    )


def _login_page(message: str = "", status: int = 200) -> HTTPResponse:
    page = _asset("login.html")
    if message:
        page = page.replace(
            _ERROR_SLOT.encode(), f'<p id="login-error" class="error">{message}</p>'.encode()
        )
    return _page(page, status)


@dashboard.get("/", strict_slashes=False)
async def page(request: Request) -> HTTPResponse:
    """The dashboard for a logged-in browser, the login form for any other."""
    sessions = _sessions(request)
    cookie = request.cookies.get(COOKIE)
    if not sessions.valid(cookie):
        if sessions.closed:
            return _login_page(CLOSED, 403)
        return _login_page()
    assert cookie is not None
    return _page(_asset("dashboard.html").replace(b"{{csrf}}", sessions.csrf(cookie).encode()))


CLOSED = (
    "The dashboard is closed: no admin token is configured "
    "(referral.admin_token_file or AFFINITY_ADMIN_TOKEN)."
)


@dashboard.post("/login", stream=True)
async def login(request: Request) -> HTTPResponse:
    """The login form's target: a session cookie and a redirect to the page, or the form again."""
    body = bytearray()
    while (chunk := await request.stream.read()) is not None:  # type: ignore[union-attr]
        body += chunk
        if len(body) > MAX_FORM:
            raise TooLarge(f"the login form takes at most {MAX_FORM} bytes")
    try:
        fields = urllib.parse.parse_qs(body.decode(errors="replace"), max_num_fields=8)
    except ValueError as exc:  # more fields than a login form has
        raise InvalidRequest(f"the login form is not one: {exc}") from exc
    sessions = _sessions(request)
    if sessions.closed:
        return _login_page(CLOSED, 403)
    cookie = sessions.login(fields.get("token", [""])[0])
    if cookie is None:
        return _login_page("That is not the admin token.", 401)
    response = HTTPResponse(status=303, headers={"Location": "/dashboard", **SECURITY_HEADERS})
    _set_cookie(response, request, cookie, int(sessions.ttl))
    return response


@dashboard.post("/logout")
async def logout(request: Request) -> HTTPResponse:
    """Forget the session in this browser (the form carries the CSRF token)."""
    sessions = _sessions(request)
    cookie = request.cookies.get(COOKIE)
    form = request.form
    if not sessions.csrf_ok(cookie, form.get("csrf") if form is not None else None):
        raise Forbidden("the logout form's CSRF token is missing or wrong; reload the page")
    response = HTTPResponse(status=303, headers={"Location": "/dashboard", **SECURITY_HEADERS})
    _set_cookie(response, request, "", 0)
    return response


def _set_cookie(response: HTTPResponse, request: Request, value: str, max_age: int) -> None:
    response.add_cookie(
        COOKIE,
        value,
        path="/dashboard",
        max_age=max_age,
        secure=request.scheme == "https",
        httponly=True,
        samesite="Strict",
    )


def _unauthorized() -> Unauthorized:
    return Unauthorized("log in to the dashboard first (post the admin token to /dashboard/login)")


@dashboard.get("/api/status")
async def api_status(request: Request) -> HTTPResponse:
    """The fleet document of ``GET /v1/status``, for a logged-in browser."""
    if not _sessions(request).valid(request.cookies.get(COOKIE)):
        raise _unauthorized()
    ctx: ReferralContext = request.app.ctx.affinity
    return json_response(fleet_status(ctx), headers={**NO_STORE, **SECURITY_HEADERS})


async def _act(request: Request, server_id: str, draining: bool) -> HTTPResponse:
    sessions = _sessions(request)
    cookie = request.cookies.get(COOKIE)
    if not sessions.valid(cookie):
        raise _unauthorized()
    if not sessions.csrf_ok(cookie, request.headers.get(CSRF_HEADER)):
        raise Forbidden(f"the {CSRF_HEADER} header is missing or wrong; reload the page")
    return await admin._set_draining(request, server_id, draining)


@dashboard.post("/api/servers/<server_id>/drain")
async def api_drain(request: Request, server_id: str) -> HTTPResponse:
    return await _act(request, server_id, True)


@dashboard.post("/api/servers/<server_id>/resume")
async def api_resume(request: Request, server_id: str) -> HTTPResponse:
    return await _act(request, server_id, False)


@dashboard.get("/static/<name>")
async def asset(request: Request, name: str) -> HTTPResponse:
    """The page's script, style sheet and icon, from the package."""
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound(f"no dashboard asset named {name!r}")
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return HTTPResponse(_asset(name), headers=headers, content_type=content_type)
