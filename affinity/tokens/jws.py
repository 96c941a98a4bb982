"""Affinity tokens: compact JWS (RFC 7515 / 7519) signed with HS256 or EdDSA.

The referral signs one token per assignment and every app server verifies one
per request, so this module hand-writes the JWS instead of calling PyJWT
(which spends most of its time in generic option handling): the header is
encoded once per key, HMAC-SHA256 starts from precomputed pads, and verified
tokens are cached. The output is plain JWT, so app servers in other languages
verify it with any stock library; the tests check interoperability with PyJWT
both ways.

Verification is closed by construction: the algorithm must be one this
verifier accepts *and* the one the ``kid``'s key was made for (so the
HS256-with-a-public-key confusion cannot happen), ``crit`` is refused, the
encoding must be canonical base64url, and every rejection is an
:class:`~affinity.errors.InvalidToken`.

Keys and key files live in :mod:`affinity.tokens.keyring`.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import math
import os
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson

from affinity.errors import ConfigError, ExpiredToken, ImmatureToken, InvalidToken, UnknownKey
from affinity.models import Claims
from affinity.tokens.keyring import ALGORITHMS, Key, KeyRing, _show

MAX_TOKEN_LENGTH: Final = 4096
"""Longer tokens are refused before any decoding (ours are about 250 characters)."""

_TOKEN_RE: Final = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
# Last character of a canonical unpadded segment, by length % 4: its unused
# low bits must be zero, otherwise two spellings would decode to one value.
_CANONICAL_LAST: Final = (None, None, frozenset(b"AQgw"), frozenset(b"AEIMQUYcgkosw048"))
_PADDING: Final = (b"", b"", b"==", b"=")
_URL_TO_STD: Final = bytes.maketrans(b"-_", b"+/")
_STD_TO_URL: Final = bytes.maketrans(b"+/", b"-_")


def _segment(std: bytes, start: int, end: int, what: str) -> bytes:
    """Decode ``std[start:end]``, a segment already checked against the url-safe
    alphabet and translated to the standard one (one ``translate`` per token is
    cheaper than ``urlsafe_b64decode`` per segment). Only the canonical
    spelling is accepted: otherwise one token would have several valid forms.
    """
    rem = (end - start) & 3
    if rem:
        last = _CANONICAL_LAST[rem]
        if last is None or std[end - 1] not in last:
            raise InvalidToken(f"the {what} is not canonical base64url")
    return binascii.a2b_base64(std[start:end] + _PADDING[rem])


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidToken(f"the {what} is not JSON") from exc
    if type(value) is not dict:
        raise InvalidToken(f"the {what} is not a JSON object")
    if orjson.dumps(value) != raw:
        # Not in the compact form this module writes: look for a key given twice, which
        # orjson would silently resolve to its last value (another parser to its first).
        try:
            json.loads(raw, object_pairs_hook=_unique_keys(what))
        except ValueError as exc:
            raise InvalidToken(f"the {what} is not JSON") from exc
    return value


def _unique_keys(what: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(items)
        if len(result) != len(items):
            raise InvalidToken(f"the {what} names a member twice")
        return result

    return pairs


def new_client_id() -> str:
    """A fresh client id: 128 random bits, url-safe, from :mod:`secrets`."""
    return secrets.token_urlsafe(16)


class ClientIds:
    """Fast, unpredictable 128-bit client ids, read from the kernel a batch at a time.

    :func:`new_client_id` makes a system call per id, a cost per assignment as
    large as the rest of the id's work; this makes one per ``batch`` ids and
    encodes the batch in one call. Each id is 16 random bytes followed by two
    zero bytes, so that ids fall on whole base64 quanta (18 bytes, 24
    characters); the zero bytes only fill the bits of the 22nd character that
    the canonical unpadded encoding of 16 bytes leaves zero, and are cut off.
    Ids are not secrets (they travel in signed tokens), but they must not
    repeat or be guessable; a forked child (another pid) throws its parent's
    batch away, so the two never hand out the same ids.
    """

    __slots__ = ("_batch", "_end", "_ids", "_next", "_pid")

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._ids = ""
        self._next = self._end = 0
        self._pid = -1

    def __call__(self) -> str:
        start = self._next
        if start == self._end or self._pid != os.getpid():
            start = self._refill()
        self._next = start + 24
        return self._ids[start : start + 22]

    def _refill(self) -> int:
        raw = bytearray(os.urandom(18 * self._batch))
        raw[16::18] = raw[17::18] = bytes(self._batch)
        self._ids = binascii.b2a_base64(raw, newline=False).translate(_STD_TO_URL).decode("ascii")
        self._end = len(self._ids)
        self._pid = os.getpid()
        return 0


class TokenIssuer:
    """Signs affinity tokens with the ring's active key (the referral side).

    Lifetimes are ``ttl`` times a uniform draw in ``[1 - jitter, 1 + jitter]``
    so that clients who were referred together do not all come back together.
    The jitter is not a secret, so the default ``rng`` is a plain seeded
    :class:`random.Random`.
    """

    __slots__ = ("_clock", "_issuer", "_key", "_low", "_random", "_span", "new_client_id", "ring")

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str = "affinity",
        ttl: float = 3600.0,
        jitter: float = 0.1,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._key = self._signing_key(ring)
        if not ttl > 0:
            raise ValueError(f"ttl: expected a positive number of seconds, got {ttl!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter: expected a fraction in [0, 1), got {jitter!r}")
        self.ring = ring
        self._issuer = issuer
        self._low = ttl * (1 - jitter)
        self._span = 2 * ttl * jitter
        self._random = (rng if rng is not None else random.Random()).random
        self.new_client_id = ClientIds()

    def _signing_key(self, ring: KeyRing) -> Key:
        key = ring.active
        if key is None:
            raise ConfigError(
                "the key ring has no active signing key", key="active", source=ring.source
            )
        if key.retired(self._clock()):
            raise ConfigError(
                f"the active key {key.kid!r} is retired", key="active", source=ring.source
            )
        return key

    def replace_ring(self, ring: KeyRing) -> None:
        """Sign with ``ring``'s active key from now on; a ConfigError, and no change, when
        it has none that may sign."""
        self._key = self._signing_key(ring)
        self.ring = ring

    def issue(self, sid: str, cid: str, svc: str) -> tuple[str, int]:
        """A token binding client ``cid`` of service ``svc`` to server ``sid``, and its lifetime."""
        now = int(self._clock())
        life = round(self._low + self._span * self._random()) or 1  # never below 1 s
        claims = {
            "iss": self._issuer,
            "sid": sid,
            "cid": cid,
            "svc": svc,
            "iat": now,
            "exp": now + life,
        }
        key = self._key
        payload = binascii.b2a_base64(orjson.dumps(claims), newline=False)
        signing_input = key.header + payload.translate(_STD_TO_URL).rstrip(b"=")
        return key.compact(signing_input).decode("ascii"), life


class TokenVerifier:
    """Checks affinity tokens (the app-server side, and the referral for old tokens).

    ``algorithms`` defaults to those of the ring's keys. Verified tokens are
    cached by their full text (a changed character is a different key) in a
    dict bounded to ``cache_size`` that drops the oldest entry first; a hit
    still checks expiry and key retirement against the clock.
    """

    __slots__ = (
        "_algorithms",
        "_cache",
        "_cache_size",
        "_clock",
        "_explicit_algs",
        "_issuer",
        "_leeway",
        "_max_lifetime",
        "_ring",
    )

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str = "affinity",
        leeway: float = 30.0,
        algorithms: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
        max_lifetime: float | None = None,
    ) -> None:
        if not leeway >= 0:
            raise ValueError(f"leeway: expected seconds >= 0, got {leeway!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size: expected a size >= 0, got {cache_size!r}")
        self._explicit_algs = None if algorithms is None else frozenset(algorithms)
        if self._explicit_algs is not None and not self._explicit_algs <= ALGORITHMS:
            bad = sorted(self._explicit_algs - ALGORITHMS)
            raise ValueError(f"algorithms: unsupported {bad}; expected 'HS256' and/or 'EdDSA'")
        if max_lifetime is not None and not max_lifetime > 0:
            raise ValueError(f"max_lifetime: expected seconds > 0, got {max_lifetime!r}")
        self._issuer = issuer
        self._leeway = leeway
        self._max_lifetime = math.inf if max_lifetime is None else max_lifetime
        self._clock = clock
        self._cache_size = cache_size
        self._cache: dict[str, tuple[Claims, float]] = {}
        """token -> (its claims, the moment it stops being good), oldest first."""
        self._ring = ring
        self._algorithms = self._pick_algorithms(ring)

    def _pick_algorithms(self, ring: KeyRing) -> frozenset[str]:
        algs = ring.algorithms if self._explicit_algs is None else self._explicit_algs
        if not algs:
            raise ConfigError(
                "no algorithm to accept: the ring is empty", key="algorithms", source=ring.source
            )
        return algs

    @property
    def ring(self) -> KeyRing:
        return self._ring

    def replace_ring(self, ring: KeyRing) -> None:
        """Verify with another ring from now on; the cache is emptied (keys may have gone)."""
        self._algorithms = self._pick_algorithms(ring)
        self._ring = ring
        self._cache.clear()

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; raises :class:`InvalidToken` (or a subclass) otherwise.

        A cached token is kept with the moment it stops being good (its expiry
        plus the leeway, or its key's retirement, whichever comes first), so a
        hit is one lookup and one comparison with the clock.
        """
        if token.__class__ is not str:
            raise InvalidToken("the token is not a string")
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            claims, good_until = hit
            if now < good_until:
                return claims
            self._cache.pop(token, None)
            self._check_exp(claims.exp, now)
            raise InvalidToken(f"key {claims.kid!r} is retired")
        claims, retire_at = self._verify(token, now)
        if self._cache_size:
            cache = self._cache
            if len(cache) >= self._cache_size:
                # StopIteration / RuntimeError: emptied or resized by another thread.
                with contextlib.suppress(StopIteration, RuntimeError):
                    cache.pop(next(iter(cache)), None)
            cache[token] = (claims, min(claims.exp + self._leeway, retire_at))
        return claims

    def _verify(self, token: str, now: float) -> tuple[Claims, float]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken(
                f"the token has {len(token)} characters; at most {MAX_TOKEN_LENGTH} are accepted"
            )
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            raise InvalidToken("not a compact JWS: expected three base64url segments joined by '.'")
        raw = token.encode("ascii")
        std = raw.translate(_URL_TO_STD)
        header = _json_object(_segment(std, 0, match.end(1), "header"), "header")
        key = self._key_for(header, now)
        signature = _segment(std, match.start(3), len(std), "signature")
        if not key.verify(raw[: match.end(2)], signature):
            raise InvalidToken("bad signature")
        payload = _json_object(_segment(std, match.start(2), match.end(2), "payload"), "payload")
        claims = self._claims(payload, key.kid, now)
        return claims, math.inf if key.retire_at is None else key.retire_at

    def _key_for(self, header: dict[str, Any], now: float) -> Key:
        """The key named by ``kid``, provided the header's ``alg`` is accepted and is that key's."""
        alg = header.get("alg")
        if type(alg) is not str or alg not in self._algorithms:
            raise InvalidToken(f"algorithm {_show(alg)} is not accepted")
        kid = header.get("kid")
        if type(kid) is not str:
            raise InvalidToken("the header has no string 'kid'")
        key = self._ring.get(kid)
        if key is None:
            raise UnknownKey(f"unknown key id {_show(kid)}")
        if key.alg != alg:
            raise InvalidToken(f"key {_show(kid)} is for {key.alg}, not {alg}")
        if key.retired(now):
            raise InvalidToken(f"key {_show(kid)} is retired")
        if "crit" in header:
            raise InvalidToken("critical header extensions are not supported")
        typ = header.get("typ")
        if typ is not None and (type(typ) is not str or typ.upper() != "JWT"):
            raise InvalidToken(f"token type {_show(typ)} is not JWT")
        return key

    def _claims(self, payload: dict[str, Any], kid: str, now: float) -> Claims:
        sid, cid, svc, iss = (
            payload.get("sid"),
            payload.get("cid"),
            payload.get("svc"),
            payload.get("iss"),
        )
        if type(sid) is not str or type(cid) is not str or type(svc) is not str:
            raise InvalidToken("claims 'sid', 'cid' and 'svc' must be strings")
        if type(iss) is not str or iss != self._issuer:
            raise InvalidToken(f"issuer {_show(iss)} is not {self._issuer!r}")
        iat, exp, nbf = payload.get("iat"), payload.get("exp"), payload.get("nbf")
        if (
            type(iat) is not int
            or type(exp) is not int
            or (nbf is not None and type(nbf) is not int)
        ):
            raise InvalidToken("claims 'iat', 'exp' (and 'nbf') must be integers")
        if exp < iat:
            raise InvalidToken("the token expires before it was issued")
        if exp - iat > self._max_lifetime:
            raise InvalidToken(
                f"the token lives {exp - iat} s; tokens of this issuer live at most "
                f"{self._max_lifetime:.0f} s"
            )
        self._check_exp(exp, now)
        if iat > now + self._leeway or (nbf is not None and nbf > now + self._leeway):
            raise ImmatureToken("the token is not valid yet (issued in the future?)")
        return Claims(sid=sid, cid=cid, svc=svc, iat=iat, exp=exp, iss=iss, kid=kid)

    def _check_exp(self, exp: int, now: float) -> None:
        if now >= exp + self._leeway:
            raise ExpiredToken(f"the token expired {now - exp:.0f} s ago")


__all__ = [
    "MAX_TOKEN_LENGTH",
    "ClientIds",
    "TokenIssuer",
    "TokenVerifier",
    "new_client_id",
]
