"""Verifying with the referral's public keys, fetched from its JWKS.

With EdDSA keys an app server holds only public keys, so a compromised
server cannot mint tokens for the others. It learns them from the
referral's ``/.well-known/jwks.json``: at start, every ``refresh_interval``
(so a key the referral dropped stops verifying), and whenever a token names
an unknown ``kid`` (so a rotation is picked up at once).

The unknown-``kid`` path is attacker-triggered, so it is bounded: a fetch
happens at most once per ``min_refresh_interval`` (failed fetches count too),
and concurrent callers share the one fetch in flight. A failed fetch raises
:class:`~affinity.errors.KeyFetchError` from :meth:`JwksKeySource.refresh`
and keeps the old keys; :meth:`JwksVerifier.verify` turns it into
:class:`~affinity.errors.UnknownKey` (``401``: the client asks the referral
again), chained to the fetch error, and logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx
import orjson

from affinity.errors import ConfigError, KeyFetchError, UnknownKey
from affinity.logs import Repeated
from affinity.models import Claims
from affinity.tokens.jws import TokenVerifier
from affinity.tokens.keyring import EDDSA, KeyRing

_log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1 << 20
"""A JWK set larger than this is refused (ours are a few hundred bytes per key)."""


def _ssl_verify(verify: ssl.SSLContext | str | os.PathLike[str] | bool) -> ssl.SSLContext | bool:
    """httpx's ``verify=``; a CA file path becomes a context (httpx deprecates paths)."""
    if isinstance(verify, ssl.SSLContext | bool):
        return verify
    try:
        return ssl.create_default_context(cafile=os.fspath(verify))
    except OSError as exc:
        raise ConfigError(f"cannot load CA file: {exc.strerror or exc}", key="verify") from exc


class JwksKeySource:
    """The referral's public keys as a :class:`KeyRing`, refreshed on demand.

    ``clock`` (monotonic seconds) only paces fetches. A ``client`` passed in
    is the caller's to close; one made here is closed by :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        verify: ssl.SSLContext | str | os.PathLike[str] | bool = True,
        timeout: float = 5.0,
        min_refresh_interval: float = 30.0,
        refresh_interval: float | None = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            scheme = httpx.URL(url).scheme
        except httpx.InvalidURL as exc:
            raise ConfigError(f"not a URL: {url!r}", key="jwks_url") from exc
        if scheme not in ("http", "https"):
            raise ConfigError(f"expected an http(s) URL, got {url!r}", key="jwks_url")
        self.url = url
        self._owns_client = client is None
        self._client = client
        self._verify = _ssl_verify(verify)
        self._timeout = timeout
        self._min_interval = min_refresh_interval
        self._interval = refresh_interval
        self._clock = clock
        self._ring = KeyRing((), source=url)
        self._version = 0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._failures = Repeated(_log, "token keys not refreshed; keeping the ones known")

    @property
    def pacing(self) -> tuple[float, float | None]:
        """``min_refresh_interval`` and ``refresh_interval``, in seconds."""
        return self._min_interval, self._interval

    @property
    def ring(self) -> KeyRing:
        """The keys of the last successful fetch (empty before the first)."""
        return self._ring

    @property
    def version(self) -> int:
        """Counts successful fetches, so users can tell when to swap rings."""
        return self._version

    async def refresh(self, force: bool = False) -> bool:
        """Fetch the JWKS unless one was tried less than ``min_refresh_interval`` ago.

        Returns True when this call's fetch (or the one in flight it joined)
        replaced the ring, False when it was skipped. ``force`` ignores the
        interval, not a fetch in flight. Raises :class:`KeyFetchError` when
        the fetch fails; the old keys stay.
        """
        task = self._inflight
        if task is None:
            now = self._clock()
            recent = (
                self._last_attempt is not None and now - self._last_attempt < self._min_interval
            )
            if recent and not force:
                return False
            self._last_attempt = now
            task = asyncio.get_running_loop().create_task(self._fetch(), name="affinity-jwks-fetch")
            task.add_done_callback(self._fetched)
            self._inflight = task
        # shield: a cancelled caller must not cancel the fetch others wait for.
        return await asyncio.shield(task)

    def _fetched(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have been cancelled

    async def _fetch(self) -> bool:
        try:
            ring = await self._download_ring()
        except KeyFetchError as exc:
            self._failures.failed(exc)
            raise
        self._failures.recovered(f"token keys from {self.url} fetched again")
        self._ring = ring
        self._version += 1
        _log.info("token keys from %s: %s", self.url, ", ".join(ring.kids) or "none")
        return True

    async def _download_ring(self) -> KeyRing:
        doc = await self._download()
        try:
            return KeyRing.from_jwks(doc, source=self.url)
        except ConfigError as exc:
            raise KeyFetchError(f"bad JWK set: {exc}") from exc

    async def _download(self) -> Any:
        if self._client is None:  # made on first use, inside the worker's event loop
            self._client = httpx.AsyncClient(verify=self._verify, timeout=self._timeout)
        body = bytearray()
        try:
            async with self._client.stream(
                "GET", self.url, headers={"Accept": "application/json"}
            ) as resp:
                if resp.status_code != 200:
                    raise KeyFetchError(f"GET {self.url} answered {resp.status_code}")
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise KeyFetchError(f"GET {self.url}: more than {MAX_JWKS_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise KeyFetchError(f"GET {self.url} failed: {type(exc).__name__}: {exc}") from exc
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise KeyFetchError(f"GET {self.url}: the answer is not JSON") from exc

    async def start(self) -> None:
        """Fetch once (a failure is logged, not raised) and refresh every ``refresh_interval``."""
        with contextlib.suppress(KeyFetchError):
            await self.refresh(force=True)
        if self._interval is not None and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(self._interval), name="affinity-jwks-poll"
            )

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(KeyFetchError):
                await self.refresh(force=True)

    async def aclose(self) -> None:
        """Stop the background refresh and any fetch in flight; close our HTTP client."""
        for task in (self._poller, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, KeyFetchError):
                    await task
        self._poller = self._inflight = None
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> JwksKeySource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class JwksVerifier:
    """Verifies EdDSA tokens against a :class:`JwksKeySource`, refreshing on an unknown ``kid``.

    Only ``EdDSA`` is accepted: a JWK set carries public keys, and accepting
    HS256 here would invite the public-key-as-HMAC-secret confusion.
    """

    def __init__(
        self,
        source: JwksKeySource,
        *,
        issuer: str = "affinity",
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
        max_lifetime: float | None = None,
    ) -> None:
        self.source = source
        self._version = source.version
        self._verifier = TokenVerifier(
            source.ring,
            issuer=issuer,
            leeway=leeway,
            algorithms=(EDDSA,),
            clock=clock,
            cache_size=cache_size,
            max_lifetime=max_lifetime,
        )

    def verify_nowait(self, token: str) -> Claims:
        """Verify with the keys known now; an unknown ``kid`` raises :class:`UnknownKey`."""
        if self.source.version != self._version:
            self._version = self.source.version
            self._verifier.replace_ring(self.source.ring)
        return self._verifier.verify(token)

    async def verify(self, token: str) -> Claims:
        """Verify; on an unknown ``kid``, refresh the keys (bounded) and try once more."""
        try:
            return self.verify_nowait(token)
        except UnknownKey as unknown:
            seen = self._version
            try:
                await self.source.refresh()
            except KeyFetchError as exc:
                raise UnknownKey(f"{unknown}; fetching the keys failed: {exc}") from exc
            if self.source.version == seen:
                raise
        return self.verify_nowait(token)

    async def start(self) -> None:
        """Start the key source (first fetch, background refresh)."""
        await self.source.start()

    async def aclose(self) -> None:
        await self.source.aclose()
