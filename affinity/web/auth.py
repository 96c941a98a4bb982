"""The admin bearer-token check, one for the referral's admin API and the app servers' drain.

The token is read once, when the app is built (from ``AFFINITY_ADMIN_TOKEN``
or the section's ``admin_token_file``), and compared in constant time. A
configured token that is empty or shorter than 32 characters stops the process
at start (:meth:`affinity.config.Config.read_secret`). Without a token every
call is refused: ``403 admin_closed`` says so, where a missing, empty or wrong
token is ``401 unauthorized``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from sanic import HTTPResponse, Request

from affinity.config import Config
from affinity.errors import AdminClosed, Unauthorized

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

    @property
    def configured(self) -> bool:
        """False when no admin token is configured: the admin API is closed."""
        return self._expected is not None

    def matches(self, given: str) -> bool:
        """True when ``given`` is the admin token, compared in constant time (a login form)."""
        if self._expected is None:
            return False
        return hmac.compare_digest(given.strip().encode(), self._expected)

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
