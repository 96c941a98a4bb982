"""App servers verifying with the referral's JWKS: learning keys, bounded refresh, failures.

A real HTTP server on 127.0.0.1 (``http.server`` in a thread) plays the
referral; the refresh pacing runs on a fake monotonic clock.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
from collections.abc import Callable, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from affinity.errors import ConfigError, InvalidToken, KeyFetchError, UnknownKey
from affinity.tokens.jwks import MAX_JWKS_BYTES, JwksKeySource, JwksVerifier
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing


class Referral(ThreadingHTTPServer):
    """Serves ``body`` with ``status`` at any path and counts the requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body = b'{"keys": []}'
        self.status = 200
        self.hits = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/.well-known/jwks.json"

    def serve(self, ring: KeyRing) -> None:
        self.body = orjson.dumps(ring.jwks())
        self.status = 200


class _Handler(BaseHTTPRequestHandler):
    server: Referral

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.hits += 1
            body, status = self.server.body, self.server.status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def referral() -> Iterator[Referral]:
    server = Referral()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(factory())


def ed_ring() -> KeyRing:
    return KeyRing.generate("EdDSA", kid="e1")


def token_for(ring: KeyRing) -> str:
    return TokenIssuer(ring).issue("s1", "c1", "web")[0]


def random_kid_token(kid: str) -> str:
    head = (
        base64.urlsafe_b64encode(orjson.dumps({"alg": "EdDSA", "kid": kid})).rstrip(b"=").decode()
    )
    return f"{head}.e30.{'A' * 86}"


def test_refresh_builds_a_public_ring(referral: Referral) -> None:
    ring = ed_ring()
    referral.serve(ring)

    async def main() -> None:
        async with JwksKeySource(referral.url) as source:
            assert len(source.ring) == 0 and source.version == 0
            assert await source.refresh() is True
            assert source.ring.kids == ("e1",) and source.version == 1
            assert source.ring.active is None
            assert await source.refresh() is False  # within min_refresh_interval
            assert referral.hits == 1

    run(main)


def test_learns_a_key_after_rotation(referral: Referral) -> None:
    ring1 = ed_ring()
    referral.serve(ring1)
    clock = Monotonic()

    async def main() -> None:
        async with JwksKeySource(referral.url, clock=clock) as source:
            check = JwksVerifier(source)
            assert (await check.verify(token_for(ring1))).kid == "e1"  # first use fetches
            ring2 = ring1.rotate()
            referral.serve(ring2)
            new = token_for(ring2)
            with pytest.raises(UnknownKey):
                await check.verify(new)  # too soon to fetch again
            assert referral.hits == 1
            clock.now += 30
            claims = await check.verify(new)
            assert claims.kid == ring2.active.kid  # type: ignore[union-attr]
            assert (await check.verify(token_for(ring1))).kid == "e1"
            assert referral.hits == 2

    run(main)


def test_a_key_dropped_from_the_jwks_stops_verifying_even_a_cached_token(
    referral: Referral,
) -> None:
    ring1 = ed_ring()
    referral.serve(ring1)
    old = token_for(ring1)
    clock = Monotonic()

    async def main() -> None:
        async with JwksKeySource(referral.url, clock=clock) as source:
            check = JwksVerifier(source)
            assert (await check.verify(old)).kid == "e1"  # fetched, verified and cached
            assert check.verify_nowait(old).kid == "e1"
            ring2 = KeyRing.generate("EdDSA", kid="e2")  # e1 is not in it
            referral.serve(ring2)
            clock.now += 30
            assert await source.refresh() is True
            with pytest.raises(UnknownKey, match="e1"):
                check.verify_nowait(old)
            assert check.verify_nowait(token_for(ring2)).kid == "e2"

    run(main)


def test_a_flood_of_random_kids_fetches_at_most_once(referral: Referral) -> None:
    referral.serve(ed_ring())
    clock = Monotonic()
    flood = [random_kid_token(secrets.token_urlsafe(8)) for _ in range(1000)]

    async def attempt(check: JwksVerifier, token: str) -> None:
        with pytest.raises(UnknownKey):
            await check.verify(token)

    async def main() -> None:
        async with JwksKeySource(referral.url, clock=clock, min_refresh_interval=30) as source:
            check = JwksVerifier(source)
            await asyncio.gather(
                *(attempt(check, t) for t in flood)
            )  # concurrent: one shared fetch
            assert referral.hits == 1
            clock.now += 29
            for token in flood:  # sequential, within the interval: none
                await attempt(check, token)
            assert referral.hits == 1
            clock.now += 1
            await asyncio.gather(*(attempt(check, t) for t in flood))
            assert referral.hits == 2

    run(main)


def test_fetch_failures_keep_the_old_keys(referral: Referral) -> None:
    ring = ed_ring()
    referral.serve(ring)
    good = token_for(ring)

    async def main() -> None:
        async with JwksKeySource(referral.url) as source:
            check = JwksVerifier(source)
            await source.refresh()
            bad_x = {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "x", "x": "!!"}]}
            for status, body in ((500, b"{}"), (200, b"<html>"), (200, orjson.dumps(bad_x))):
                referral.status, referral.body = status, body
                with pytest.raises(KeyFetchError):
                    await source.refresh(force=True)
                assert source.ring.kids == ("e1",) and source.version == 1
                assert (await check.verify(good)).kid == "e1"
            referral.body = b" " * (MAX_JWKS_BYTES + 1)
            with pytest.raises(KeyFetchError, match="bytes"):
                await source.refresh(force=True)

    run(main)


def test_unreachable_referral_surfaces_as_unknown_key(referral: Referral) -> None:
    url = referral.url
    referral.shutdown()
    referral.server_close()

    async def main() -> None:
        async with JwksKeySource(url) as source:
            check = JwksVerifier(source)
            with pytest.raises(UnknownKey) as info:
                await check.verify(token_for(ed_ring()))
            assert isinstance(info.value.__cause__, KeyFetchError)
            assert isinstance(info.value.__cause__.__cause__, httpx.ConnectError)
            await source.start()  # logs, does not raise
            with pytest.raises(KeyFetchError):
                await source.refresh(force=True)

    run(main)


def test_only_eddsa_is_accepted(referral: Referral) -> None:
    hs = KeyRing.generate("HS256", kid="e1")

    async def main() -> None:
        async with JwksKeySource(referral.url) as source:
            with pytest.raises(InvalidToken) as info:
                await JwksVerifier(source).verify(token_for(hs))
            assert not isinstance(info.value, UnknownKey)
            assert referral.hits == 0

    run(main)


def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(referral: Referral) -> None:
    referral.serve(ed_ring())

    async def main() -> None:
        async with JwksKeySource(referral.url) as source:
            first = asyncio.ensure_future(source.refresh())
            second = asyncio.ensure_future(source.refresh())
            await asyncio.sleep(0)
            first.cancel()
            assert await second is True
            assert first.cancelled() and referral.hits == 1 and source.version == 1

    run(main)


class Counting(JwksKeySource):
    """Sets ``third`` once three fetches have succeeded."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.third = asyncio.Event()

    async def refresh(self, force: bool = False) -> bool:
        fetched = await super().refresh(force)
        if self.version >= 3:
            self.third.set()
        return fetched


def test_start_fetches_and_polls_and_aclose_stops(referral: Referral) -> None:
    referral.serve(ed_ring())

    async def main() -> None:
        source = Counting(referral.url, refresh_interval=0)
        check = JwksVerifier(source)
        await check.start()
        assert source.version >= 1
        await asyncio.wait_for(source.third.wait(), 10)  # the poller refreshes on its own
        await check.aclose()
        hits = referral.hits
        for _ in range(20):
            await asyncio.sleep(0)
        assert referral.hits == hits

    run(main)


def test_a_client_passed_in_is_left_open(referral: Referral) -> None:
    referral.serve(ed_ring())

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            async with JwksKeySource(referral.url, client=client) as source:
                assert await source.refresh()
            assert not client.is_closed

    run(main)


def test_pyjwt_jwk_client_reads_what_the_referral_serves(referral: Referral) -> None:
    ring = ed_ring().rotate()
    referral.serve(ring)
    token = token_for(ring)
    key = jwt.PyJWKClient(referral.url, cache_keys=False).get_signing_key_from_jwt(token)
    assert jwt.decode(token, key.key, algorithms=["EdDSA"])["sid"] == "s1"


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="http"):
        JwksKeySource("ftp://example.com/jwks.json")
    with pytest.raises(ConfigError) as info:
        JwksKeySource("https://example.com/jwks.json", verify=tmp_path / "missing-ca.pem")
    assert info.value.key == "verify"
