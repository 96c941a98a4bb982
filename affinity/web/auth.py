"""Bearer-token checks: the admin token (operators) and registration tokens (one per server).

The token is read when the app is built (from ``AFFINITY_ADMIN_TOKEN`` or the
section's ``admin_token_file``), read again on ``SIGHUP`` (:meth:`BearerAuth.take`),
and compared in constant time. A
configured token that is empty or shorter than 32 characters stops the process
at start (:meth:`affinity.config.Config.read_secret`). Without a token every
call is refused: ``403 admin_closed`` says so, where a missing, empty or wrong
token is ``401 unauthorized``.

App servers do not hold the admin token. Each registers with a token of its
own, derived from the referral's registration secret and its server id
(:func:`registration_token`, ``affinity keys registration-token``): it lets
that server register, heartbeat, drain, resume and deregister itself, and
read the shared settings, nothing else (:func:`admin_or_server`). A token
for another server's id is ``403 forbidden``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from sanic import HTTPResponse, Request

from affinity.config import Config
from affinity.errors import AdminClosed, Forbidden, Unauthorized

H = TypeVar("H", bound=Callable[..., Awaitable[HTTPResponse]])


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the admin token of one section."""

    __slots__ = ("_expected", "_where")

    def __init__(self, token: str | None, *, where: str = "the admin token") -> None:
        self._expected = token.encode() if token else None
        self._where = where

    @classmethod
    def from_config(cls, config: Config, section: str) -> BearerAuth:
        """The admin token of ``[referral]`` or ``[server]``, read now and kept."""
        key = f"{section}.admin_token_file"
        settings = getattr(config, section)
        token = config.read_secret(settings.admin_token_file, "AFFINITY_ADMIN_TOKEN", key)
        return cls(token, where=f"{key} or AFFINITY_ADMIN_TOKEN")

    def take(self, other: BearerAuth) -> None:
        """Check against ``other``'s token from now on (a reload): every holder of this
        object, such as the dashboard's sessions, sees the new token at once."""
        self._expected = other._expected
        self._where = other._where

    @property
    def configured(self) -> bool:
        """False when no admin token is configured: the admin API is closed."""
        return self._expected is not None

    def matches(self, given: str) -> bool:
        """True when ``given`` is the admin token, compared in constant time (a login form)."""
        if self._expected is None:
            return False
        given = given.strip()
        return hmac.compare_digest(given.encode(), self._expected) and bool(given)

    def derive_key(self, purpose: bytes) -> bytes | None:
        """A key for ``purpose`` made from the admin token (HMAC-SHA256); None when closed.

        What is signed with it (the dashboard's session cookies) is valid wherever
        the same token is configured, and no longer once the token changes.
        """
        if self._expected is None:
            return None
        return hmac.new(self._expected, purpose, hashlib.sha256).digest()

    def check(self, authorization: str | None) -> None:
        """Pass, or raise :class:`AdminClosed` / :class:`Unauthorized` (rendered 403 / 401)."""
        if self._expected is None:
            raise AdminClosed(
                f"the admin API is closed: no admin token is configured ({self._where})"
            )
        scheme, _, given = (authorization or "").partition(" ")
        # Compare whatever was sent, so the time taken says nothing about the scheme.
        given = given.strip()
        same = hmac.compare_digest(given.encode(), self._expected)
        if not (same and given and scheme.lower() == "bearer"):
            raise Unauthorized("a valid 'Authorization: Bearer <admin token>' header is required")


def admin_only(handler: H) -> H:
    """Run ``handler(request, ...)`` only for a request with the app's admin token.

    The token is the app's ``app.ctx.admin_auth`` (a :class:`BearerAuth`, set
    when the app is built); a refusal is raised and answered by the app's
    error handler.
    """

    @wraps(handler)
    async def checked(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        auth: BearerAuth = request.app.ctx.admin_auth
        auth.check(request.headers.get("authorization"))
        return await handler(request, *args, **kwargs)

    return checked  # type: ignore[return-value]


REGISTRATION_SECRET_ENV = "AFFINITY_REGISTRATION_SECRET"
REGISTRATION_TOKEN_ENV = "AFFINITY_REGISTRATION_TOKEN"
_CONTEXT = b"affinity registration token v1\0"


def registration_token(secret: str, server_id: str) -> str:
    """The registration token of ``server_id``: ``<server_id>.<HMAC-SHA256 of it, base64url>``."""
    mac = hmac.new(secret.encode(), _CONTEXT + server_id.encode(), hashlib.sha256).digest()
    return f"{server_id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


class RegistrationAuth:
    """Checks registration tokens against the referral's registration secret (if any)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | None) -> None:
        self._secret = secret

    @classmethod
    def from_config(cls, config: Config) -> RegistrationAuth:
        """``referral.registration_secret_file`` or ``AFFINITY_REGISTRATION_SECRET``, read now."""
        secret = config.read_secret(
            config.referral.registration_secret_file,
            REGISTRATION_SECRET_ENV,
            "referral.registration_secret_file",
        )
        return cls(secret)

    def take(self, other: RegistrationAuth) -> None:
        """Check against ``other``'s secret from now on (a reload)."""
        self._secret = other._secret

    @property
    def configured(self) -> bool:
        return self._secret is not None

    def server_of(self, authorization: str | None) -> str | None:
        """The server id a valid ``Bearer <registration token>`` names, else None."""
        if self._secret is None:
            return None
        scheme, _, given = (authorization or "").partition(" ")
        given = given.strip()
        server_id = given.rpartition(".")[0]
        expected = registration_token(self._secret, server_id)
        same = hmac.compare_digest(given.encode(), expected.encode())
        return server_id if same and server_id and scheme.lower() == "bearer" else None


def admin_or_server(handler: H) -> H:
    """Run ``handler(request, ...)`` for the admin token, or for the registration token of the
    server the route names (``server_id``); a route without ``server_id`` takes any server's.

    The tokens are the app's ``app.ctx.admin_auth`` and ``app.ctx.registration_auth``.
    """

    @wraps(handler)
    async def checked(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        authorization = request.headers.get("authorization")
        registration: RegistrationAuth = request.app.ctx.registration_auth
        server_id = registration.server_of(authorization)
        if server_id is not None:
            wanted = kwargs.get("server_id", server_id)
            if wanted != server_id:
                raise Forbidden(
                    f"this registration token is for server {server_id!r}, not {wanted!r}"
                )
            return await handler(request, *args, **kwargs)
        admin: BearerAuth = request.app.ctx.admin_auth
        if registration.configured and not admin.configured:
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
        admin.check(authorization)
        return await handler(request, *args, **kwargs)

    return checked  # type: ignore[return-value]
