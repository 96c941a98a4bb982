"""Dashboard sessions: a signed cookie, so that no admin token ever sits in a URL or a page.

The dashboard's login form posts the admin token once; the answer sets a
cookie holding an expiry, a nonce and an HMAC of both under a key derived
from the admin token. Nothing is stored: every worker and every replica that
shares the admin token accepts the cookie, and changing the token ends every
session. The CSRF token of a session is another HMAC of the cookie, sent
back by the page in a header on every action.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from affinity.web.auth import BearerAuth

COOKIE = "affinity_dashboard"
CSRF_HEADER = "x-affinity-csrf"
MAX_COOKIE = 256
_PURPOSE = b"affinity dashboard session 1"


class Sessions:
    """Issue and check dashboard session cookies for the app's admin token."""

    def __init__(
        self,
        auth: BearerAuth,
        *,
        ttl: float = 12 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self.ttl = ttl
        self._clock = clock

    @property
    def _key(self) -> bytes | None:
        """Derived from the admin token in force: a reloaded token ends every session."""
        return self._auth.derive_key(_PURPOSE)

    @property
    def closed(self) -> bool:
        """True when no admin token is configured: nobody can log in."""
        return self._key is None

    def login(self, given: str) -> str | None:
        """A new session cookie if ``given`` is the admin token (compared in constant time)."""
        if self._key is None or not self._auth.matches(given):
            return None
        expires = int(self._clock() + self.ttl)
        body = f"{expires}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def valid(self, cookie: str | None) -> bool:
        """True for an unexpired cookie this admin token signed."""
        if self._key is None or not cookie or len(cookie) > MAX_COOKIE:
            return False
        body, _, mac = cookie.rpartition(".")
        expires, _, _nonce = body.partition(".")
        if not expires.isdigit() or int(expires) <= self._clock():
            return False
        return hmac.compare_digest(mac.encode(), self._sign(body).encode())

    def csrf(self, cookie: str) -> str:
        """The CSRF token that goes with a session cookie."""
        return self._sign(f"csrf.{cookie}")

    def csrf_ok(self, cookie: str | None, given: str | None) -> bool:
        if not self.valid(cookie) or not given:
            return False
        assert cookie is not None
        return hmac.compare_digest(given.encode(), self.csrf(cookie).encode())

    def _sign(self, text: str) -> str:
        return hmac.new(self._key or b"", text.encode(), hashlib.sha256).hexdigest()
