"""Affinity tokens: round trips, rejection of everything malformed, keys and key files.

PyJWT is the reference: our tokens must verify with it and its tokens with
ours. Hypothesis examples default to 1000 per property; set
``AFFINITY_HYPOTHESIS_EXAMPLES=10000`` for the figure the security plan asks of CI.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import itertools
import os
import random
import stat
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import affinity.tokens.jws
from affinity.errors import (
    ConfigError,
    ExpiredToken,
    ImmatureToken,
    InvalidToken,
    UnknownKey,
)
from affinity.models import Claims
from affinity.tokens.jws import MAX_TOKEN_LENGTH, TokenIssuer, TokenVerifier, new_client_id
from affinity.tokens.keyring import (
    Key,
    KeyRing,
    generate_admin_token,
    generate_keyfile,
    rotate_keyfile,
    write_keyring,
)

NOW = 1_700_000_000
SECRET = hashlib.sha256(b"affinity test secret").digest()
ED_PRIVATE = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"affinity ed25519").digest())
EXAMPLES = int(os.environ.get("AFFINITY_HYPOTHESIS_EXAMPLES", "1000"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None)
URLSAFE = string.ascii_letters + string.digits + "-_"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hs_ring() -> KeyRing:
    return KeyRing([Key("k1", "HS256", secret=SECRET)], "k1")


def ed_ring() -> KeyRing:
    return KeyRing([Key("e1", "EdDSA", private=ED_PRIVATE)], "e1")


RINGS = {"HS256": hs_ring(), "EdDSA": ed_ring()}


def refusal(call: Callable[[], object]) -> tuple[str, str | None, str | None]:
    """The message, key and source of the ConfigError ``call`` raises: compared whole."""
    with pytest.raises(ConfigError) as info:
        call()
    return info.value.message, info.value.key, info.value.source


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_dict(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": "affinity",
        "sid": "s1",
        "cid": "c1",
        "svc": "web",
        "iat": NOW,
        "exp": NOW + 3600,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def forge(header: Any, payload: Any, key: Key | None = None, signature: bytes | None = None) -> str:
    """A token with arbitrary header and payload (JSON values, or raw bytes), signed by ``key``."""
    head = b64(header if isinstance(header, bytes) else orjson.dumps(header))
    body = b64(payload if isinstance(payload, bytes) else orjson.dumps(payload))
    signing_input = f"{head}.{body}".encode()
    if signature is None:
        signature = (key or RINGS["HS256"].get("k1")).sign(signing_input)  # type: ignore[union-attr]
    return f"{head}.{body}.{b64(signature)}"


def hs_header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not ...}


def verifier(
    ring: KeyRing | None = None, clock: FakeClock | None = None, **kw: Any
) -> TokenVerifier:
    return TokenVerifier(ring or hs_ring(), clock=clock or FakeClock(), **kw)


def issue(ring: KeyRing, clock: FakeClock | None = None, **kw: Any) -> str:
    return TokenIssuer(ring, clock=clock or FakeClock(), **kw).issue("s1", "c1", "web")[0]


def assert_rejected(check: TokenVerifier, token: Any) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        check.verify(token)
    return info.value


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "EdDSA"])
def test_round_trip(alg: str) -> None:
    ring = RINGS[alg]
    token, expires_in = TokenIssuer(ring, clock=FakeClock()).issue("s1", "c-1", "web")
    claims = verifier(ring).verify(token)
    kid = ring.active.kid  # type: ignore[union-attr]
    assert claims == Claims(
        sid="s1", cid="c-1", svc="web", iat=NOW, exp=NOW + expires_in, iss="affinity", kid=kid
    )
    header = orjson.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": alg, "kid": kid, "typ": "JWT"}


def test_expires_in_jitters_within_ten_percent() -> None:
    issuer = TokenIssuer(hs_ring(), ttl=3600, jitter=0.1, clock=FakeClock(), rng=random.Random(7))
    lifetimes = []
    for _ in range(2000):
        token, expires_in = issuer.issue("s1", "c1", "web")
        payload = orjson.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert payload["exp"] - payload["iat"] == expires_in
        lifetimes.append(expires_in)
    assert min(lifetimes) >= 3240 and max(lifetimes) <= 3960
    assert max(lifetimes) - min(lifetimes) > 600  # the spread is real, not a constant
    assert len(set(lifetimes)) > 300


def test_no_jitter_gives_exact_ttl() -> None:
    issuer = TokenIssuer(hs_ring(), ttl=90, jitter=0, clock=FakeClock())
    assert {issuer.issue("s", "c", "v")[1] for _ in range(50)} == {90}


def test_new_client_id_is_128_bit_urlsafe() -> None:
    issuer = TokenIssuer(hs_ring())
    other = TokenIssuer(hs_ring())
    ids = {new_client_id() for _ in range(1000)}
    ids |= {issuer.new_client_id() for _ in range(1000)} | {other.new_client_id()}
    assert len(ids) == 2001
    for cid in ids:
        assert len(cid) == 22 and set(cid) <= set(URLSAFE)


@pytest.mark.parametrize("size", [32, 64, 65, 200])
def test_hmac_matches_the_standard_library(size: int) -> None:
    secret = bytes(range(size % 256)) * (size // 256) + bytes(range(size % 256))
    secret = (secret * 2)[:size]
    key = Key("k", "HS256", secret=secret)
    for message in (b"", b"x", b"a.b" * 100):
        assert key.sign(message) == hmac.digest(secret, message, "sha256")


@given(
    sid=st.text(max_size=100),
    cid=st.text(max_size=100),
    svc=st.text(max_size=100),
    iss=st.text(max_size=100),
    iat=st.integers(0, 2**40),
)
@PROPERTY
def test_valid_claim_sets_are_always_accepted(
    sid: str, cid: str, svc: str, iss: str, iat: int
) -> None:
    for ring in RINGS.values():
        clock = FakeClock(iat + 0.5)
        token, expires_in = TokenIssuer(ring, issuer=iss, clock=clock).issue(sid, cid, svc)
        claims = TokenVerifier(ring, issuer=iss, clock=clock, cache_size=0).verify(token)
        assert (claims.sid, claims.cid, claims.svc, claims.iss) == (sid, cid, svc, iss)
        assert (claims.iat, claims.exp) == (iat, iat + expires_in)


# -- everything else is rejected, always as InvalidToken ---------------------------


VALID = {alg: issue(ring) for alg, ring in RINGS.items()}


@pytest.mark.parametrize("alg", ["HS256", "EdDSA"])
def test_every_single_character_change_is_rejected(alg: str) -> None:
    check = verifier(RINGS[alg])
    token = VALID[alg]
    check.verify(token)  # cached: a changed token must still miss the cache
    replacements = URLSAFE + ".=+/ \x00é" if alg == "HS256" else "AQgwB_-.=+é"
    for i, char in itertools.product(range(len(token)), replacements):
        if token[i] != char:
            assert_rejected(check, token[:i] + char + token[i + 1 :])


@pytest.mark.parametrize("alg", ["HS256", "EdDSA"])
def test_truncations_extensions_and_swaps_are_rejected(alg: str) -> None:
    check = verifier(RINGS[alg])
    token = VALID[alg]
    for i in range(len(token)):
        assert_rejected(check, token[:i])
    for suffix in ("A", "AA", ".", "=", "==", ".x", "\n", " "):
        assert_rejected(check, token + suffix)
    segments = token.split(".")
    for order in itertools.permutations(range(3)):
        if order != (0, 1, 2):
            assert_rejected(check, ".".join(segments[i] for i in order))
    other = issue_other(RINGS[alg])
    mixed = other.split(".")
    assert_rejected(check, f"{segments[0]}.{mixed[1]}.{segments[2]}")
    assert_rejected(check, f"{segments[0]}.{segments[1]}.{mixed[2]}")
    assert_rejected(check, f"{segments[0]}.{segments[1]}")
    assert_rejected(check, f"{token}.{segments[2]}")


def issue_other(ring: KeyRing) -> str:
    return TokenIssuer(ring, clock=FakeClock()).issue("s2", "c2", "web")[0]


@given(data=st.data())
@PROPERTY
def test_random_character_mutations_are_rejected(data: st.DataObject) -> None:
    alg = data.draw(st.sampled_from(["HS256", "EdDSA"]))
    token = VALID[alg]
    i = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.characters().filter(lambda c: c != token[i]))
    assert_rejected(verifier(RINGS[alg]), token[:i] + char + token[i + 1 :])


@given(data=st.data())
@PROPERTY
def test_bit_flips_in_decoded_segments_are_rejected(data: st.DataObject) -> None:
    alg = data.draw(st.sampled_from(["HS256", "EdDSA"]))
    segments = VALID[alg].split(".")
    index = data.draw(st.integers(0, 2))
    raw = bytearray(base64.urlsafe_b64decode(segments[index] + "=="))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    segments[index] = b64(bytes(raw))
    assert_rejected(verifier(RINGS[alg]), ".".join(segments))


@given(text=st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))))
@PROPERTY
def test_random_text_is_rejected(text: str) -> None:
    assert_rejected(verifier(), text)


@given(
    text=st.lists(st.text(URLSAFE, min_size=1), min_size=1, max_size=5).map(".".join),
)
@PROPERTY
def test_random_base64url_segments_are_rejected(text: str) -> None:
    assert_rejected(verifier(), text)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
CLAIM_VALUES = st.one_of(
    JSON, st.integers(NOW - 10**6, NOW + 10**6), st.sampled_from(["affinity", "s1"])
)


@given(
    header=st.one_of(
        JSON,
        st.fixed_dictionaries(
            {"alg": st.one_of(st.just("HS256"), JSON), "kid": st.one_of(st.just("k1"), JSON)},
            optional={"typ": JSON, "crit": JSON, "nbf": JSON},
        ),
    ),
    payload=st.one_of(
        JSON,
        st.fixed_dictionaries(
            {},
            optional=dict.fromkeys(["iss", "sid", "cid", "svc", "iat", "exp", "nbf"], CLAIM_VALUES),
        ),
    ),
)
@PROPERTY
def test_signed_but_arbitrary_json_never_escapes_invalid_token(header: Any, payload: Any) -> None:
    """Even with a valid signature, odd JSON is either accepted as sound claims or InvalidToken."""
    try:
        claims = verifier().verify(forge(header, payload))
    except InvalidToken:
        return
    assert isinstance(header, dict) and header["alg"] == "HS256" and header["kid"] == "k1"
    assert all(isinstance(getattr(claims, n), str) for n in ("sid", "cid", "svc", "iss"))
    assert type(claims.iat) is int and type(claims.exp) is int


BAD_CLAIMS = [
    pytest.param(claims_dict(sid=...), id="no-sid"),
    pytest.param(claims_dict(cid=...), id="no-cid"),
    pytest.param(claims_dict(svc=...), id="no-svc"),
    pytest.param(claims_dict(iss=...), id="no-iss"),
    pytest.param(claims_dict(iat=...), id="no-iat"),
    pytest.param(claims_dict(exp=...), id="no-exp"),
    pytest.param(claims_dict(sid=1), id="int-sid"),
    pytest.param(claims_dict(cid=None), id="null-cid"),
    pytest.param(claims_dict(svc=["web"]), id="list-svc"),
    pytest.param(claims_dict(iss="someone-else"), id="wrong-iss"),
    pytest.param(claims_dict(iss=1), id="int-iss"),
    pytest.param(claims_dict(iat=True), id="bool-iat"),
    pytest.param(claims_dict(exp=True), id="bool-exp"),
    pytest.param(claims_dict(exp=float(NOW + 3600)), id="float-exp"),
    pytest.param(claims_dict(iat=str(NOW)), id="str-iat"),
    pytest.param(claims_dict(nbf="now"), id="str-nbf"),
    pytest.param(claims_dict(exp=NOW - 1), id="exp-before-iat"),
    pytest.param([], id="array"),
    pytest.param("claims", id="string"),
    pytest.param(None, id="null"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b'{"iat": 1e999}', id="huge-float"),
    pytest.param(b'{"iat": 123456789012345678901234567890}', id="huge-int"),
    pytest.param(b"", id="empty"),
]


@pytest.mark.parametrize("payload", BAD_CLAIMS)
def test_bad_claims_are_rejected(payload: Any) -> None:
    assert_rejected(verifier(), forge(hs_header(), payload))


BAD_HEADERS = [
    pytest.param(hs_header(alg=...), id="no-alg"),
    pytest.param(hs_header(kid=...), id="no-kid"),
    pytest.param(hs_header(kid=1), id="int-kid"),
    pytest.param(hs_header(alg=["HS256"]), id="list-alg"),
    pytest.param(hs_header(alg={"x": 1}), id="dict-alg"),
    pytest.param(hs_header(alg="hs256"), id="lowercase-alg"),
    pytest.param(hs_header(crit=["exp"]), id="crit"),
    pytest.param(hs_header(typ="at+jwt"), id="other-typ"),
    pytest.param(hs_header(typ=1), id="int-typ"),
    pytest.param([], id="array"),
    pytest.param(b"{", id="not-json"),
]


@pytest.mark.parametrize("header", BAD_HEADERS)
def test_bad_headers_are_rejected(header: Any) -> None:
    assert_rejected(verifier(), forge(header, claims_dict()))


def test_header_without_typ_is_accepted() -> None:
    assert verifier().verify(forge(hs_header(typ=...), claims_dict())).sid == "s1"


def test_alg_none_and_foreign_algorithms_are_rejected() -> None:
    check = verifier()
    head = b64(orjson.dumps({"alg": "none", "kid": "k1"}))
    body = b64(orjson.dumps(claims_dict()))
    assert_rejected(check, f"{head}.{body}.")
    assert_rejected(check, f"{head}.{body}")
    assert_rejected(check, forge({"alg": "none", "kid": "k1"}, claims_dict()))
    hs512 = f"{b64(orjson.dumps(hs_header(alg='HS512')))}.{body}"
    sig = hmac.digest(SECRET, hs512.encode(), "sha512")
    assert "not accepted" in str(assert_rejected(check, f"{hs512}.{b64(sig)}"))
    assert_rejected(check, forge(hs_header(alg="RS256"), claims_dict()))


def test_public_key_used_as_hmac_secret_is_rejected() -> None:
    """The classic confusion: an EdDSA ring, a token HMAC-signed with the public key bytes."""
    ring = ed_ring()
    public = ring.get("e1").public_key.public_bytes_raw()  # type: ignore[union-attr]
    forged = forge(
        {"alg": "HS256", "kid": "e1", "typ": "JWT"}, claims_dict(), Key("x", "HS256", secret=public)
    )
    assert_rejected(verifier(ring), forged)
    both = verifier(ring, algorithms=["HS256", "EdDSA"])
    assert "is for EdDSA" in str(assert_rejected(both, forged))
    assert_rejected(verifier(ring.public(), algorithms=["HS256", "EdDSA"]), forged)


def test_eddsa_token_on_hs_ring_and_wrong_key_are_rejected() -> None:
    assert_rejected(verifier(hs_ring()), VALID["EdDSA"])
    other = KeyRing([Key("k1", "HS256", secret=bytes(32))], "k1")
    assert "bad signature" in str(assert_rejected(verifier(other), VALID["HS256"]))


def test_unknown_kid_raises_unknown_key() -> None:
    with pytest.raises(UnknownKey):
        verifier().verify(forge(hs_header(kid="nope"), claims_dict()))


def test_oversized_and_non_string_tokens_are_rejected() -> None:
    check = verifier()
    assert_rejected(check, "a" * (MAX_TOKEN_LENGTH + 1))
    big = forge(hs_header(), claims_dict(sid="x" * MAX_TOKEN_LENGTH))
    assert "at most" in str(assert_rejected(check, big))
    assert_rejected(check, VALID["HS256"].encode())
    assert_rejected(check, None)


def test_rejections_do_not_echo_long_attacker_values() -> None:
    error = assert_rejected(verifier(), forge(hs_header(kid="k" * 3000), claims_dict()))
    assert len(str(error)) < 120


# -- time ------------------------------------------------------------------------


def test_expiry_boundaries_at_leeway_plus_minus_one_second() -> None:
    ring = hs_ring()
    token = issue(ring, ttl=100, jitter=0)
    exp = NOW + 100
    for now, ok in ((exp + 29, True), (exp + 31, False), (exp + 30, False), (exp - 1, True)):
        check = verifier(ring, FakeClock(now), leeway=30)
        if ok:
            assert check.verify(token).exp == exp
        else:
            with pytest.raises(ExpiredToken):
                check.verify(token)


def test_iat_in_the_future_beyond_leeway_is_immature() -> None:
    ring = hs_ring()
    check = verifier(ring, FakeClock(NOW), leeway=30)
    assert check.verify(issue(ring, FakeClock(NOW + 29))).iat == NOW + 29
    with pytest.raises(ImmatureToken):
        check.verify(issue(ring, FakeClock(NOW + 31)))


def test_nbf_in_the_future_beyond_leeway_is_immature() -> None:
    check = verifier(leeway=30)
    assert check.verify(forge(hs_header(), claims_dict(nbf=NOW + 29))).sid == "s1"
    with pytest.raises(ImmatureToken):
        check.verify(forge(hs_header(), claims_dict(nbf=NOW + 31)))


def test_cache_hit_still_expires() -> None:
    clock = FakeClock()
    ring = hs_ring()
    check = verifier(ring, clock, leeway=0)
    token = issue(ring, ttl=60, jitter=0)
    assert check.verify(token) is check.verify(token)  # the second answer came from the cache
    clock.now = NOW + 60
    with pytest.raises(ExpiredToken):
        check.verify(token)


def test_cache_is_bounded_and_can_be_off() -> None:
    ring = hs_ring()
    issuer = TokenIssuer(ring, clock=FakeClock())
    tokens = [issuer.issue(f"s{i}", "c", "web")[0] for i in range(50)]
    check = verifier(ring, cache_size=10)
    first = [check.verify(token) for token in tokens]
    # A cached answer is the same object; the ten latest are kept, the oldest dropped first.
    assert check.verify(tokens[-10]) is first[-10]
    again = check.verify(tokens[-11])
    assert again is not first[-11] and again.sid == "s39"  # evicted, verified again
    assert check.verify(tokens[0]) is not first[0]
    off = verifier(ring, cache_size=0)
    assert off.verify(tokens[0]) is not off.verify(tokens[0])


# -- rotation ----------------------------------------------------------------------


def test_rotation_keeps_old_tokens_until_retire_at() -> None:
    clock = FakeClock()
    ring1 = hs_ring()
    old = issue(ring1, clock)
    ring2 = ring1.rotate(retire_at=NOW + 600)
    assert ring2.active is not None and ring2.active.kid != "k1"
    assert ring2.get("k1").retire_at == NOW + 600  # type: ignore[union-attr]
    assert ring1.get("k1").retire_at is None  # type: ignore[union-attr]
    new = issue(ring2, clock)
    check = verifier(ring2, clock)
    assert check.verify(old).kid == "k1"
    assert check.verify(new).kid == ring2.active.kid
    clock.now = NOW + 599
    assert check.verify(old).kid == "k1"  # cache hit
    clock.now = NOW + 600
    assert "retired" in str(assert_rejected(check, old))  # cache hit checks retirement
    assert "retired" in str(assert_rejected(verifier(ring2, clock), old))
    assert check.verify(new).sid == "s1"
    with pytest.raises(ConfigError, match="retired"):
        TokenIssuer(KeyRing([Key("k1", "HS256", secret=SECRET, retire_at=NOW)], "k1"), clock=clock)


def test_replacing_the_ring_forgets_tokens_verified_under_a_dropped_key() -> None:
    clock = FakeClock()
    old_ring = hs_ring()
    token = issue(old_ring, clock)
    check = verifier(old_ring, clock)
    claims = check.verify(token)
    assert claims.kid == "k1" and check.verify(token) is claims  # verified, then cached
    other = hashlib.sha256(b"another secret").digest()
    new_ring = KeyRing([Key("k2", "HS256", secret=other)], "k2")
    check.replace_ring(new_ring)
    with pytest.raises(UnknownKey, match="k1"):
        check.verify(token)
    assert check.verify(issue(new_ring, clock)).kid == "k2"


def test_an_issuer_given_a_new_ring_signs_with_its_active_key_or_refuses_it_unchanged() -> None:
    clock = FakeClock()
    issuer = TokenIssuer(hs_ring(), clock=clock)
    rotated = hs_ring().rotate("EdDSA")
    assert rotated.active is not None
    issuer.replace_ring(rotated)
    assert issuer.ring is rotated
    token, _ = issuer.issue("s1", "c1", "web")
    assert verifier(rotated, clock).verify(token).kid == rotated.active.kid
    retired = KeyRing([Key("k9", "HS256", secret=SECRET, retire_at=NOW)], "k9")
    with pytest.raises(ConfigError, match="'k9' is retired"):
        issuer.replace_ring(retired)
    assert issuer.ring is rotated
    token, _ = issuer.issue("s1", "c1", "web")
    assert verifier(rotated, clock).verify(token).kid == rotated.active.kid


def test_rotation_to_another_algorithm() -> None:
    ring = hs_ring().rotate("EdDSA")
    assert ring.active is not None and ring.active.alg == "EdDSA"
    assert ring.algorithms == {"HS256", "EdDSA"}
    check = verifier(ring)
    assert check.verify(VALID["HS256"]).kid == "k1"
    assert check.verify(issue(ring)).kid == ring.active.kid


# -- PyJWT interop -------------------------------------------------------------------


def test_pyjwt_verifies_our_tokens() -> None:
    hs = TokenIssuer(hs_ring()).issue("s1", "c1", "web")[0]
    ed = TokenIssuer(ed_ring()).issue("s1", "c1", "web")[0]
    for token, key, alg in ((hs, SECRET, "HS256"), (ed, ED_PRIVATE.public_key(), "EdDSA")):
        decoded = jwt.decode(token, key, algorithms=[alg], issuer="affinity")
        assert decoded["sid"] == "s1" and decoded["exp"] > decoded["iat"]
        assert jwt.get_unverified_header(token)["kid"] in ("k1", "e1")


def test_we_verify_pyjwt_tokens() -> None:
    payload = claims_dict()
    hs = jwt.encode(payload, SECRET, algorithm="HS256", headers={"kid": "k1"})
    ed = jwt.encode(payload, ED_PRIVATE, algorithm="EdDSA", headers={"kid": "e1"})
    assert verifier(hs_ring()).verify(hs).cid == "c1"
    assert verifier(ed_ring()).verify(ed).cid == "c1"
    assert verifier(ed_ring().public()).verify(ed).cid == "c1"
    no_kid = jwt.encode(payload, SECRET, algorithm="HS256")
    assert "kid" in str(assert_rejected(verifier(), no_kid))  # a kid is required


def test_pyjwt_reads_our_jwks() -> None:
    ring = ed_ring().rotate()
    jwks = jwt.PyJWKSet.from_dict(ring.jwks())
    token = TokenIssuer(ring).issue("s1", "c1", "web")[0]
    key = jwks[ring.active.kid]  # type: ignore[union-attr]
    assert jwt.decode(token, key.key, algorithms=["EdDSA"])["svc"] == "web"


# -- key rings -----------------------------------------------------------------------


def test_public_ring_verifies_but_cannot_sign() -> None:
    public = ed_ring().public()
    assert public.active is None and not public.get("e1").can_sign  # type: ignore[union-attr]
    assert verifier(public).verify(VALID["EdDSA"]).kid == "e1"
    with pytest.raises(ConfigError, match="no active"):
        TokenIssuer(public)
    with pytest.raises(ConfigError, match="HS256"):
        hs_ring().public()
    with pytest.raises(ConfigError, match="HS256"):
        hs_ring().rotate("EdDSA").public()


def test_jwks_lists_current_ed25519_keys_only() -> None:
    ring = KeyRing(
        [
            Key("k1", "HS256", secret=SECRET),
            Key("old", "EdDSA", private=Ed25519PrivateKey.generate(), retire_at=NOW),
            Key("e1", "EdDSA", private=ED_PRIVATE),
        ],
        "e1",
    )
    jwks = ring.jwks(now=NOW)
    assert [k["kid"] for k in jwks["keys"]] == ["e1"]
    assert jwks["keys"][0] == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64(ED_PRIVATE.public_key().public_bytes_raw()),
        "kid": "e1",
        "alg": "EdDSA",
        "use": "sig",
    }
    assert [k["kid"] for k in ring.jwks(now=NOW - 1)["keys"]] == ["old", "e1"]
    back = KeyRing.from_jwks(jwks)
    assert back.kids == ("e1",) and back.active is None
    assert verifier(back).verify(VALID["EdDSA"]).kid == "e1"


def test_from_jwks_skips_foreign_keys_and_names_bad_ones() -> None:
    good = ed_ring().jwks()["keys"][0]
    doc = {
        "keys": [
            {"kty": "RSA", "kid": "r", "n": "x", "e": "AQAB"},
            {**good, "use": "enc"},
            {**good, "alg": "ES256"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": good["x"]},
            good,
        ]
    }
    assert KeyRing.from_jwks(doc).kids == ("e1",)
    for bad, key in (
        ({"keys": [{**good, "x": "!!"}]}, "keys[0].x"),
        ({"keys": [{**good, "x": b64(b"short")}]}, "keys[0].x"),
        ({"keys": [{**good, "kid": None}]}, "keys[0].kid"),
        ({"keys": [good, good]}, "keys[1].kid"),
        ({"keys": ["x"]}, "keys[0]"),
        ({"nokeys": []}, "keys"),
    ):
        with pytest.raises(ConfigError) as info:
            KeyRing.from_jwks(bad, source="https://referral/jwks")
        assert info.value.key == key and info.value.source == "https://referral/jwks"


def test_secrets_never_appear_in_repr_or_messages() -> None:
    ring = hs_ring().rotate("EdDSA")
    text = repr(ring) + str(ring) + repr(list(ring))
    doc = orjson.loads(ring.to_json())
    material = [k.get("secret") or k.get("private") for k in doc["keys"]]
    for value in [*material, repr(SECRET), SECRET.hex()]:
        assert value not in text
    short = b64(SECRET[:20])
    broken = f'{{"active": "k1", "keys": [{{"kid": "k1", "alg": "HS256", "secret": "{short}"}}]}}'
    for data in (broken, broken[:-3], broken.replace('"HS256"', '"EdDSA"')):
        with pytest.raises(ConfigError) as info:
            KeyRing.from_json(data, "keys.json")
        assert short not in str(info.value)


def test_algorithm_and_option_errors() -> None:
    with pytest.raises(ConfigError, match="unknown algorithm"):
        KeyRing.generate("RS256")
    with pytest.raises(ConfigError):
        Key("k", "HS256", secret=b"short")
    with pytest.raises(ConfigError, match="empty"):
        TokenVerifier(KeyRing([]))


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: TokenVerifier(hs_ring(), algorithms=["none"]), "algorithms"),
        (lambda: TokenVerifier(hs_ring(), leeway=-1), "leeway"),
        (lambda: TokenVerifier(hs_ring(), cache_size=-1), "cache_size"),
        (lambda: TokenIssuer(hs_ring(), ttl=0), "ttl"),
        (lambda: TokenIssuer(hs_ring(), jitter=1.0), "jitter"),
        (lambda: ed_ring().public().get("e1").sign(b"x"), "e1"),  # type: ignore[union-attr]
        (lambda: hs_ring().get("k1").to_jwk(), "k1"),  # type: ignore[union-attr]
    ],
)
def test_bad_arguments_are_value_errors_not_config_errors(
    make: Callable[[], object], argument: str
) -> None:
    """ConfigError is for the configuration (key files, affinity.toml); these are calls."""
    with pytest.raises(ValueError, match=argument) as info:
        make()
    assert not isinstance(info.value, ConfigError)


def test_a_public_key_ring_cannot_be_the_signing_ring() -> None:
    with pytest.raises(ConfigError, match="no signing material"):
        KeyRing(ed_ring().public(), "e1")


# -- key files -----------------------------------------------------------------------


def test_write_keyring_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = hs_ring().rotate("EdDSA", retire_at=NOW + 10)
    write_keyring(path, ring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]
    loaded = KeyRing.load(path)
    assert loaded.kids == ring.kids and loaded.source == str(path)
    assert loaded.active is not None and loaded.active.kid == ring.active.kid  # type: ignore[union-attr]
    assert loaded.get("k1").retire_at == NOW + 10  # type: ignore[union-attr]
    assert loaded.to_json() == ring.to_json()
    assert verifier(loaded).verify(issue(ring)).sid == "s1"
    assert verifier(ring).verify(issue(loaded)).sid == "s1"


def test_write_keyring_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("precious")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="exists") as info:
        write_keyring(path, hs_ring())
    assert info.value.source == str(path) and path.read_text() == "precious"
    write_keyring(path, hs_ring(), force=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyRing.load(path).kids == ("k1",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]
    with pytest.raises(ConfigError, match="cannot write"):
        write_keyring(tmp_path / "missing" / "keys.json", hs_ring())


def test_generate_and_rotate_keyfile(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = generate_keyfile(path, "EdDSA", False)
    assert ring.active is not None and ring.active.alg == "EdDSA"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="exists"):
        generate_keyfile(path, "HS256", False)
    assert generate_keyfile(path, "HS256", True).algorithms == {"HS256"}
    rotated = rotate_keyfile(path, retire_after=600, clock=FakeClock())
    assert len(rotated) == 2 and KeyRing.load(path).kids == rotated.kids
    first = rotated.kids[0]
    assert KeyRing.load(path).get(first).retire_at == NOW + 600  # type: ignore[union-attr]


def key_doc(*keys: Any, active: Any = "k1", **extra: Any) -> bytes:
    return orjson.dumps({"active": active, "keys": list(keys), **extra})


HS = {"kid": "k1", "alg": "HS256", "secret": b64(SECRET)}
ED_RAW = ED_PRIVATE.private_bytes_raw()
BAD_FILES = [
    pytest.param(b"{not json", None, id="not-json"),
    pytest.param(b"[]", None, id="not-object"),
    pytest.param(key_doc(), "keys", id="no-keys"),
    pytest.param(orjson.dumps({"active": "k1", "keys": "k1"}), "keys", id="keys-not-list"),
    pytest.param(key_doc(HS, activ="k1"), "activ", id="unknown-top-field"),
    pytest.param(key_doc(HS, active=1), "active", id="active-int"),
    pytest.param(key_doc(HS, active="k9"), "active", id="active-unknown"),
    pytest.param(key_doc("k1"), "keys[0]", id="key-not-object"),
    pytest.param(key_doc({**HS, "kid": ""}), "keys[0].kid", id="empty-kid"),
    pytest.param(key_doc({"alg": "HS256", "secret": b64(SECRET)}), "keys[0].kid", id="no-kid"),
    pytest.param(key_doc(HS, {**HS, "alg": "RS256", "kid": "k2"}), "keys[1].alg", id="bad-alg"),
    pytest.param(key_doc(HS, HS), "keys[1].kid", id="duplicate-kid"),
    pytest.param(key_doc({**HS, "secret": b64(SECRET[:31])}), "keys[0].secret", id="short-secret"),
    pytest.param(key_doc({**HS, "secret": "not base64!"}), "keys[0].secret", id="bad-base64"),
    pytest.param(key_doc({**HS, "secret": "A"}), "keys[0].secret", id="bad-base64-length"),
    pytest.param(key_doc({**HS, "secret": "A" * 45}), "keys[0].secret", id="bad-base64-length-45"),
    pytest.param(key_doc({"kid": "k1", "alg": "HS256"}), "keys[0].secret", id="no-secret"),
    pytest.param(key_doc({**HS, "private": b64(ED_RAW)}), "keys[0].private", id="hs-with-private"),
    pytest.param(
        key_doc({**HS, "public": b64(ED_PRIVATE.public_key().public_bytes_raw())}),
        "keys[0].public",
        id="hs-with-public",
    ),
    pytest.param(key_doc({**HS, "retire_at": "soon"}), "keys[0].retire_at", id="retire-str"),
    pytest.param(key_doc({**HS, "retire_at": True}), "keys[0].retire_at", id="retire-bool"),
    pytest.param(key_doc({**HS, "retire": 1}), "keys[0].retire", id="unknown-key-field"),
    pytest.param(key_doc({"kid": "k1", "alg": "EdDSA"}), "keys[0]", id="ed-no-material"),
    pytest.param(
        key_doc({"kid": "k1", "alg": "EdDSA", "private": b64(ED_RAW[:31])}),
        "keys[0].private",
        id="ed-short",
    ),
    pytest.param(
        key_doc({"kid": "k1", "alg": "EdDSA", "public": b64(bytes(31))}),
        "keys[0].public",
        id="ed-public-short",
    ),
    pytest.param(
        key_doc({"kid": "k1", "alg": "EdDSA", "secret": b64(SECRET)}),
        "keys[0].secret",
        id="ed-with-secret",
    ),
    pytest.param(
        key_doc({"kid": "k1", "alg": "EdDSA", "private": b64(ED_RAW), "public": b64(bytes(32))}),
        "keys[0].public",
        id="ed-mismatch",
    ),
    pytest.param(
        key_doc({"kid": "k1", "alg": "EdDSA", "public": b64(bytes(32))}),
        "active",
        id="active-public-only",
    ),
]


@pytest.mark.parametrize(("data", "key"), BAD_FILES)
def test_bad_key_files_name_the_key_and_the_file(
    tmp_path: Path, data: bytes, key: str | None
) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        KeyRing.load(path)
    assert info.value.key == key and info.value.source == str(path)
    assert str(path) in str(info.value) and (key is None or key in str(info.value))


def test_key_file_variants_that_are_fine() -> None:
    padded = base64.urlsafe_b64encode(SECRET).decode()
    ring = KeyRing.from_json(key_doc({**HS, "secret": padded, "retire_at": None}), "x")
    assert verifier(ring).verify(VALID["HS256"]).kid == "k1"
    public = b64(ED_PRIVATE.public_key().public_bytes_raw())
    both = {"kid": "e1", "alg": "EdDSA", "private": b64(ED_RAW), "public": public}
    ring = KeyRing.from_json(
        key_doc(both, {"kid": "e2", "alg": "EdDSA", "public": public}, active="e1"), "x"
    )
    assert verifier(ring).verify(VALID["EdDSA"]).kid == "e1"
    assert KeyRing.from_json(key_doc(HS, active=None), "x").active is None


def test_load_and_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        KeyRing.load(tmp_path / "absent.json")
    assert info.value.source == str(tmp_path / "absent.json")
    monkeypatch.delenv("AFFINITY_TOKEN_KEYS", raising=False)
    with pytest.raises(ConfigError) as info:
        KeyRing.from_env()
    assert info.value.key == "AFFINITY_TOKEN_KEYS"
    monkeypatch.setenv("AFFINITY_TOKEN_KEYS", hs_ring().to_json().decode())
    assert KeyRing.from_env().kids == ("k1",)
    path = tmp_path / "keys.json"
    write_keyring(path, ed_ring())
    monkeypatch.setenv("MY_KEYS", str(path))
    assert KeyRing.from_env("MY_KEYS").kids == ("e1",)
    monkeypatch.setenv("MY_KEYS", '{"keys": []}')
    with pytest.raises(ConfigError) as info:
        KeyRing.from_env("MY_KEYS")
    assert info.value.source == "$MY_KEYS" and info.value.key == "keys"


# -- static check: MACs compare in constant time --------------------------------------


def _names(node: ast.AST) -> list[str]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.append(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.append(sub.attr)
    return found


def test_macs_are_compared_with_compare_digest_only() -> None:
    package = Path(affinity.tokens.jws.__file__).parent
    source = "\n".join((package / name).read_text() for name in ("jws.py", "keyring.py"))
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
        ):
            names = _names(node)
            suspicious = [n for n in names if any(w in n.lower() for w in ("sig", "mac", "digest"))]
            assert not suspicious, (
                f"line {node.lineno}: == / != on {suspicious}; use hmac.compare_digest"
            )
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "compare_digest"
    ]
    owners = [c.func.value for c in calls if isinstance(c.func, ast.Attribute)]
    assert owners and all(isinstance(o, ast.Name) and o.id == "hmac" for o in owners)


def test_jws_exports_only_its_own_names() -> None:
    """Key-ring names have one home: they are imported from keyring.py, never through jws.py."""
    import affinity.tokens.keyring

    assert affinity.tokens.jws.__all__
    shared = [n for n in affinity.tokens.jws.__all__ if hasattr(affinity.tokens.keyring, n)]
    assert not shared


def test_cli_generates_and_rotates_a_key_file(tmp_path: Path) -> None:
    from affinity.cli.main import main

    path = tmp_path / "keys.json"
    assert main(["keys", "generate", "--out", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert main(["keys", "generate", "--out", str(path)]) == 2  # no overwrite without --force
    first = KeyRing.load(path)
    assert main(["keys", "rotate", "--file", str(path), "--retire-after", "60"]) == 0
    rotated = KeyRing.load(path)
    assert rotated.active is not None and first.active is not None
    assert rotated.active.kid != first.active.kid
    assert first.active.kid in rotated.kids
    token = TokenIssuer(first).issue("s1", "c", "web")[0]
    assert TokenVerifier(rotated).verify(token).sid == "s1"


def test_a_lifetime_past_the_maximum_is_refused() -> None:
    check = verifier(max_lifetime=3990)
    assert check.verify(forge(hs_header(), claims_dict(exp=NOW + 3990))).sid == "s1"
    rejected = assert_rejected(check, forge(hs_header(), claims_dict(exp=NOW + 3991)))
    assert "at most 3990 s" in str(rejected)
    with pytest.raises(ValueError, match="max_lifetime"):
        verifier(max_lifetime=0)


@pytest.mark.parametrize("part", ["header", "payload"])
def test_a_member_given_twice_is_refused(part: str) -> None:
    header, payload = orjson.dumps(hs_header()), orjson.dumps(claims_dict())
    if part == "header":
        header = header.replace(b'"alg":"HS256"', b'"alg":"none","alg":"HS256"')
    else:
        payload = payload.replace(b'"sid":"s1"', b'"sid":"s2","sid":"s1"')
    rejected = assert_rejected(verifier(), forge(header, payload))
    assert "twice" in str(rejected)
    # Whitespace alone (another library's spelling) is fine.
    assert verifier().verify(forge(hs_header(), b" " + orjson.dumps(claims_dict()))).sid == "s1"


# -- exact values that the checks above leave open --------------------------------------


def test_the_default_lifetime_is_an_hour() -> None:
    assert TokenIssuer(hs_ring(), jitter=0, clock=FakeClock()).issue("s1", "c1", "web")[1] == 3600


def test_a_lifetime_under_a_second_rounds_up_to_one() -> None:
    issuer = TokenIssuer(hs_ring(), ttl=0.4, jitter=0, clock=FakeClock())
    assert issuer.issue("s1", "c1", "web")[1] == 1


def test_the_jitter_draws_from_the_given_generator() -> None:
    def lifetimes() -> list[int]:
        issuer = TokenIssuer(hs_ring(), clock=FakeClock(), rng=random.Random(7))
        return [issuer.issue("s1", "c1", "web")[1] for _ in range(20)]

    assert lifetimes() == lifetimes()


def test_the_issuer_keeps_its_ring() -> None:
    ring = hs_ring()
    assert TokenIssuer(ring).ring is ring


@pytest.mark.parametrize(
    ("ring", "message"),
    [
        (
            KeyRing([Key("k1", "HS256", secret=SECRET)], None, source="keys.json"),
            "the key ring has no active signing key",
        ),
        (
            KeyRing(
                [Key("k1", "HS256", secret=SECRET, retire_at=NOW - 1)], "k1", source="keys.json"
            ),
            "the active key 'k1' is retired",
        ),
    ],
)
def test_an_unusable_active_key_names_the_setting_and_the_file(ring: KeyRing, message: str) -> None:
    assert refusal(lambda: TokenIssuer(ring, clock=FakeClock())) == (
        message,
        "active",
        "keys.json",
    )


def test_the_expiry_message_says_how_long_ago() -> None:
    token = issue(hs_ring(), ttl=100, jitter=0)
    with pytest.raises(ExpiredToken) as info:
        verifier(clock=FakeClock(NOW + 100 + 45), leeway=30).verify(token)
    assert str(info.value) == "the token expired 45 s ago"


def test_client_ids_are_read_from_the_kernel_a_batch_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    urandom = os.urandom

    def counted(n: int) -> bytes:
        reads.append(n)
        return urandom(n)

    monkeypatch.setattr("affinity.tokens.jws.os.urandom", counted)
    ids = affinity.tokens.jws.ClientIds(batch=4)
    made = [ids() for _ in range(9)]
    assert reads == [72, 72, 72], "one read of 4 x 18 bytes per 4 ids"
    assert len(set(made)) == 9


def test_client_ids_are_canonical_base64_of_16_bytes() -> None:
    """The 22nd character carries 2 bits of the id and 4 zero bits: one spelling per id."""
    ids = affinity.tokens.jws.ClientIds(batch=64)
    for _ in range(64):
        cid = ids()
        raw = base64.urlsafe_b64decode(cid + "==")
        assert len(raw) == 16 and b64(raw) == cid


def _non_canonical_header() -> str:
    """A valid token whose header's last character has a padding bit set."""
    head, body, signature = forge(hs_header(), claims_dict()).split(".")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet[alphabet.index(head[-1]) ^ 1]
    return f"{head[:-1]}{last}.{body}.{signature}"


BOTH = KeyRing([Key("k1", "HS256", secret=SECRET), Key("e1", "EdDSA", private=ED_PRIVATE)], "k1")
RETIRED = KeyRing([Key("k1", "HS256", secret=SECRET, retire_at=NOW - 1)], None)


@pytest.mark.parametrize(
    ("ring", "token", "message"),
    [
        (None, 123, "the token is not a string"),
        (None, _non_canonical_header(), "the header is not canonical base64url"),
        (None, forge(b"{", claims_dict()), "the header is not JSON"),
        (None, forge(hs_header(), b"[]"), "the payload is not a JSON object"),
        (
            None,
            forge(b'{"alg":"HS256","kid":"k1","kid":"k1"}', claims_dict()),
            "the header names a member twice",
        ),
        (None, forge(hs_header(alg="none"), claims_dict()), "algorithm 'none' is not accepted"),
        (None, forge(hs_header(kid=...), claims_dict()), "the header has no string 'kid'"),
        (
            BOTH,
            forge({"alg": "EdDSA", "kid": "k1"}, claims_dict(), key=BOTH.get("e1")),
            "key 'k1' is for HS256, not EdDSA",
        ),
        (RETIRED, forge(hs_header(), claims_dict(), key=RETIRED.get("k1")), "key 'k1' is retired"),
        (
            None,
            forge(hs_header(crit=["b64"]), claims_dict()),
            "critical header extensions are not supported",
        ),
        (None, forge(hs_header(typ="JOSE"), claims_dict()), "token type 'JOSE' is not JWT"),
        (
            None,
            forge(hs_header(), claims_dict(sid=1)),
            "claims 'sid', 'cid' and 'svc' must be strings",
        ),
        (None, forge(hs_header(), claims_dict(iss="other")), "issuer 'other' is not 'affinity'"),
        (
            None,
            forge(hs_header(), claims_dict(iat="x")),
            "claims 'iat', 'exp' (and 'nbf') must be integers",
        ),
        (
            None,
            forge(hs_header(), claims_dict(exp=NOW - 1)),
            "the token expires before it was issued",
        ),
        (
            None,
            forge(hs_header(), claims_dict(iat=NOW + 100, exp=NOW + 200)),
            "the token is not valid yet (issued in the future?)",
        ),
    ],
)
def test_each_rejection_says_why(ring: KeyRing | None, token: Any, message: str) -> None:
    """The reason is what an app server logs and answers: it must name the actual fault."""
    assert str(assert_rejected(verifier(ring), token)) == message


def test_the_lifetime_refusal_gives_both_figures() -> None:
    token = forge(hs_header(), claims_dict(exp=NOW + 200))
    message = "the token lives 200 s; tokens of this issuer live at most 100 s"
    assert str(assert_rejected(verifier(max_lifetime=100), token)) == message


def test_the_leeway_bounds_are_inclusive_for_a_zero_lifetime_and_nbf() -> None:
    """exp == iat is a (short) lifetime, not an inversion; nbf exactly leeway ahead is valid."""
    check = verifier(leeway=30)
    assert check.verify(forge(hs_header(), claims_dict(exp=NOW))).exp == NOW
    assert check.verify(forge(hs_header(), claims_dict(nbf=NOW + 30))).sid == "s1"
    assert_rejected(check, forge(hs_header(), claims_dict(nbf=NOW + 31)))


COMPACT = "not a compact JWS: expected three base64url segments joined by '.'"


def test_the_length_limit_is_inclusive_and_its_refusal_counts() -> None:
    check = verifier()
    assert str(assert_rejected(check, "a" * MAX_TOKEN_LENGTH)) == COMPACT
    too_long = "the token has 4097 characters; at most 4096 are accepted"
    assert str(assert_rejected(check, "a" * (MAX_TOKEN_LENGTH + 1))) == too_long


def test_a_non_canonical_signature_is_named() -> None:
    head, body, signature = forge(hs_header(), claims_dict()).split(".")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    odd = signature[:-1] + alphabet[alphabet.index(signature[-1]) ^ 1]
    message = "the signature is not canonical base64url"
    assert str(assert_rejected(verifier(), f"{head}.{body}.{odd}")) == message


def test_a_cached_token_stays_valid_within_the_leeway() -> None:
    clock = FakeClock()
    ring = hs_ring()
    check = verifier(ring, clock, leeway=30)
    token = issue(ring, ttl=60, jitter=0)
    first = check.verify(token)
    clock.now = NOW + 60 + 29
    assert check.verify(token) is first


def test_an_expired_cached_token_leaves_room_in_the_cache() -> None:
    clock = FakeClock()
    ring = hs_ring()
    check = verifier(ring, clock, leeway=0, cache_size=2)
    long_lived = issue(ring, ttl=3600, jitter=0)
    short_lived = issue(ring, ttl=60, jitter=0)
    kept = check.verify(long_lived)
    check.verify(short_lived)
    clock.now = NOW + 60
    with pytest.raises(ExpiredToken):
        check.verify(short_lived)
    check.verify(issue(ring, ttl=3600, jitter=0, clock=FakeClock(NOW + 1)))
    assert check.verify(long_lived) is kept, "the expired entry went, not the older live one"


def test_an_unsupported_algorithm_is_named() -> None:
    with pytest.raises(ValueError) as info:
        TokenVerifier(hs_ring(), algorithms=["HS256", "none", "RS256"])
    assert str(info.value) == (
        "algorithms: unsupported ['RS256', 'none']; expected 'HS256' and/or 'EdDSA'"
    )


def test_an_empty_ring_names_the_setting_and_the_file() -> None:
    assert refusal(lambda: TokenVerifier(KeyRing([], source="keys.json"))) == (
        "no algorithm to accept: the ring is empty",
        "algorithms",
        "keys.json",
    )


def test_a_maximum_lifetime_under_a_second_is_allowed() -> None:
    token = forge(hs_header(), claims_dict(exp=NOW + 1))
    assert_rejected(verifier(max_lifetime=0.5), token)


def test_the_default_leeway_is_thirty_seconds() -> None:
    token = issue(hs_ring(), ttl=100, jitter=0)
    exp = NOW + 100
    assert TokenVerifier(hs_ring(), clock=FakeClock(exp + 29)).verify(token).exp == exp
    with pytest.raises(ExpiredToken):
        TokenVerifier(hs_ring(), clock=FakeClock(exp + 30), cache_size=0).verify(token)


def test_the_default_cache_holds_ten_thousand_tokens() -> None:
    ring = hs_ring()
    issuer = TokenIssuer(ring, clock=FakeClock())
    tokens = [issuer.issue("s1", f"c{i}", "web")[0] for i in range(10_001)]
    check = TokenVerifier(ring, clock=FakeClock())
    first = [check.verify(token) for token in tokens]
    assert check.verify(tokens[1]) is first[1], "the 2nd of 10 001 is still cached"
    assert check.verify(tokens[0]) is not first[0], "the 1st was dropped"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (forge(hs_header(), claims_dict(), signature=b"\0" * 32), "bad signature"),
        (forge(hs_header(), b"{"), "the payload is not JSON"),
    ],
)
def test_payload_and_signature_faults_are_named(token: str, message: str) -> None:
    assert str(assert_rejected(verifier(), token)) == message


def test_a_non_canonical_payload_is_named() -> None:
    head, body, _ = forge(hs_header(), claims_dict()).split(".")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    odd = body[:-1] + alphabet[alphabet.index(body[-1]) ^ 1]
    signed = hs_ring().get("k1").sign(f"{head}.{odd}".encode())  # type: ignore[union-attr]
    message = "the payload is not canonical base64url"
    assert str(assert_rejected(verifier(), f"{head}.{odd}.{b64(signed)}")) == message


# -- where a process gets its keys, and new bearer secrets ------------------------------


def test_the_key_ring_comes_from_the_environment_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from affinity.config import Config, TokenSettings
    from affinity.tokens.keyring import load_keyring

    path = tmp_path / "keys.json"
    write_keyring(path, ed_ring())
    config = Config(source="affinity.toml", tokens=TokenSettings(keys_file=path))
    monkeypatch.setenv("AFFINITY_TOKEN_KEYS", hs_ring().to_json().decode())
    assert load_keyring(config).kids == ("k1",)
    monkeypatch.delenv("AFFINITY_TOKEN_KEYS")
    assert load_keyring(config).kids == ("e1",)


@pytest.mark.parametrize("configured", [False, True])
def test_missing_token_keys_name_the_setting_and_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured: bool
) -> None:
    from affinity.config import Config, TokenSettings
    from affinity.tokens.keyring import load_keyring

    monkeypatch.delenv("AFFINITY_TOKEN_KEYS", raising=False)
    path = tmp_path / "keys.json"
    tokens = TokenSettings(keys_file=path if configured else None)
    refused = refusal(lambda: load_keyring(Config(source="affinity.toml", tokens=tokens)))
    message = (
        f"key file {str(path)!r} does not exist; make one with 'affinity keys generate'"
        if configured
        else "no token keys: set tokens.keys_file (make one with 'affinity keys generate') "
        "or the environment variable AFFINITY_TOKEN_KEYS"
    )
    assert refused == (
        message,
        "tokens.keys_file",
        "affinity.toml",
    )


def test_a_new_admin_token_is_43_private_characters_and_not_overwritten(tmp_path: Path) -> None:
    from affinity.tokens.keyring import generate_admin_token

    path = tmp_path / "admin-token"
    generate_admin_token(path)
    first = path.read_text()
    assert len(first) == 44 and first.endswith("\n") and set(first[:-1]) <= set(URLSAFE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError) as info:
        generate_admin_token(path, what="registration secret")
    assert info.value.message == "the registration secret file exists; pass force to overwrite it"
    assert info.value.source == str(path) and path.read_text() == first
    generate_admin_token(path, force=True)
    assert path.read_text() != first


BAD_FILE_MESSAGES: dict[str, str] = {
    "not-json": "not valid JSON (unexpected character, expected a string key at line 1 column 2)",
    "not-object": "expected a JSON object with 'active' and 'keys'",
    "no-keys": "expected a non-empty list of keys",
    "keys-not-list": "expected a non-empty list of keys",
    "unknown-top-field": "unknown field; expected 'active' and 'keys'",
    "active-int": "expected a key id, got 1",
    "active-unknown": "no key has kid 'k9'",
    "key-not-object": "expected a key object",
    "empty-kid": "expected a non-empty key id",
    "no-kid": "expected a non-empty key id",
    "bad-alg": "unknown algorithm 'RS256'; expected 'HS256' or 'EdDSA'",
    "duplicate-kid": "duplicate key id 'k1'",
    "short-secret": "expected a secret of at least 32 bytes",
    "bad-base64": "expected base64url text",
    "bad-base64-length": "expected base64url text",
    "bad-base64-length-45": "expected base64url text",
    "no-secret": "expected a secret of at least 32 bytes",
    "hs-with-private": "HS256 keys do not take this field",
    "hs-with-public": "HS256 keys do not take this field",
    "retire-str": "expected a unix time (number) or null",
    "retire-bool": "expected a unix time (number) or null",
    "unknown-key-field": (
        "unknown field; expected one of ['alg', 'kid', 'private', 'public', 'retire_at', 'secret']"
    ),
    "ed-no-material": "an EdDSA key needs 'private' or 'public'",
    "ed-short": "expected 32 bytes, got 31",
    "ed-public-short": "expected 32 bytes, got 31",
    "ed-with-secret": "EdDSA keys do not take this field",
    "ed-mismatch": "does not match the private key",
    "active-public-only": "key 'k1' holds no signing material",
}


@pytest.mark.parametrize(("data", "key"), BAD_FILES)
def test_bad_key_files_say_what_is_wrong(
    tmp_path: Path, data: bytes, key: str | None, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        KeyRing.load(path)
    case = request.node.callspec.id
    assert info.value.message == BAD_FILE_MESSAGES[case]


def test_a_public_ring_keeps_retirement_and_source_and_refuses_hs256() -> None:
    ring = KeyRing(
        [Key("e1", "EdDSA", private=ED_PRIVATE, retire_at=NOW + 5)], "e1", source="keys.json"
    )
    public = ring.public()
    assert public.source == "keys.json" and public.get("e1").retire_at == NOW + 5  # type: ignore[union-attr]
    assert orjson.loads(public.to_json())["keys"][0]["public"] == b64(
        ED_PRIVATE.public_key().public_bytes_raw()
    )
    with pytest.raises(ConfigError) as info:
        KeyRing([Key("k1", "HS256", secret=SECRET)], "k1", source="keys.json").public()
    assert info.value.source == "keys.json"
    assert info.value.message.startswith("HS256 secrets cannot be made public; sign with EdDSA")
    assert info.value.message.endswith("hold public keys only")


def test_a_key_file_is_indented_json_ending_in_a_newline() -> None:
    text = hs_ring().to_json().decode()
    assert text.endswith("}\n") and '\n  "active": "k1"' in text


def test_retiring_an_eddsa_key_keeps_its_signing_and_verifying_halves() -> None:
    key = ed_ring().get("e1")
    assert key is not None
    retired = key.replace(retire_at=NOW + 60)
    assert retired.retire_at == NOW + 60 and retired.can_sign
    signature = retired.sign(b"x")
    assert key.public().verify(b"x", signature) and retired.public().verify(b"x", signature)
    with pytest.raises(ValueError) as info:
        hs_ring().get("k1").public()  # type: ignore[union-attr]
    assert str(info.value) == "key 'k1' is HS256: a shared secret cannot be made public"


def test_a_ring_shows_its_active_key_and_keys_but_no_secret() -> None:
    assert repr(hs_ring()) == (
        "KeyRing(active='k1', keys=[Key(kid='k1', alg='HS256', can_sign=True, retire_at=None)], "
        "source='<memory>')"
    )


def test_rotating_a_key_file_uses_the_named_algorithm_and_retires_the_old_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    write_keyring(path, hs_ring())
    ring = rotate_keyfile(path, "EdDSA", retire_after=600, clock=FakeClock())
    assert ring.active is not None and ring.active.alg == "EdDSA"
    assert ring.get("k1").retire_at == NOW + 600  # type: ignore[union-attr]
    assert KeyRing.load(path).kids == ring.kids


@pytest.mark.parametrize(
    ("alg", "shown"),
    [("R" * 38, repr("R" * 38)), ("R" * 39, "'" + "R" * 36 + "...")],
)
def test_a_long_value_is_shown_cut_to_forty_characters(alg: str, shown: str) -> None:
    doc = {"active": "k1", "keys": [{"kid": "k1", "alg": alg, "secret": b64(SECRET)}]}
    with pytest.raises(ConfigError) as info:
        KeyRing.from_json(orjson.dumps(doc), "keys.json")
    assert info.value.message == f"unknown algorithm {shown}; expected 'HS256' or 'EdDSA'"


def test_an_unknown_algorithm_to_generate_names_alg() -> None:
    with pytest.raises(ConfigError) as info:
        Key.generate("RS256")
    assert info.value.key == "alg"


def test_rotating_adds_the_named_key_and_retires_only_the_old_active_one() -> None:
    ring = KeyRing(
        [Key("k0", "HS256", secret=SECRET), Key("k1", "HS256", secret=SECRET[::-1])],
        "k1",
        source="keys.json",
    )
    rotated = ring.rotate(kid="k2", retire_at=NOW + 600)
    assert rotated.active is not None and rotated.active.kid == "k2"
    assert rotated.active.alg == "HS256" and rotated.source == "keys.json"
    retire = {kid: rotated.get(kid).retire_at for kid in rotated.kids}  # type: ignore[union-attr]
    assert retire == {"k0": None, "k1": NOW + 600, "k2": None}
    fresh = ring.rotate().active
    assert fresh is not None and len(fresh.kid) == 8 and fresh.kid not in ring.kids


@pytest.mark.parametrize("alg", ["HS256", "EdDSA"])
def test_issued_tokens_are_byte_for_byte_what_pyjwt_writes(alg: str) -> None:
    """The hand-written issuing path (Key.compact) against PyJWT as the reference."""
    ring = hs_ring() if alg == "HS256" else ed_ring()
    key: Any = SECRET if alg == "HS256" else ED_PRIVATE
    issuer = TokenIssuer(ring, clock=FakeClock(), rng=random.Random(3))
    for sid, cid, svc in (
        ("s1", "c1", "web"),
        ("a.b_c-d", new_client_id(), "x" * 64),
        ("s" * 64, 'c"\\/', "web"),  # escapes, and lengths that pad base64 differently
        ("s12", "c", "w"),
    ):
        token, life = issuer.issue(sid, cid, svc)
        claims: dict[str, Any] = {"iss": "affinity", "sid": sid, "cid": cid, "svc": svc}
        claims |= {"iat": int(NOW), "exp": int(NOW) + life}
        kid = ring.active.kid  # type: ignore[union-attr]
        assert token == jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


# -- keys, rings and key files: what each refusal says, and the cases seldom met ---------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: Key("k", "HS256", secret=SECRET, private=ED_PRIVATE),
            "an HS256 key needs a secret of 32+ bytes only",
        ),
        (
            lambda: Key("k", "HS256", secret=SECRET, public=ED_PRIVATE.public_key()),
            "an HS256 key needs a secret of 32+ bytes only",
        ),
        (lambda: Key("e", "EdDSA"), "an EdDSA key needs an Ed25519 private or public key"),
        (
            lambda: Key("e", "EdDSA", secret=SECRET, private=ED_PRIVATE),
            "an EdDSA key needs an Ed25519 private or public key",
        ),
        (
            lambda: Key("k", "RS256", secret=SECRET),
            "unknown algorithm 'RS256'; expected 'HS256' or 'EdDSA'",
        ),
    ],
)
def test_a_key_takes_only_the_material_of_its_algorithm(
    make: Callable[[], Key], message: str
) -> None:
    assert refusal(make) == (message, None, None)


def test_retiring_a_public_only_key_keeps_its_public_key() -> None:
    key = ed_ring().public().get("e1")
    assert key is not None
    retired = key.replace(retire_at=NOW + 60)
    assert retired.retire_at == NOW + 60 and not retired.can_sign
    public = retired.public_key
    assert public is not None
    assert public.public_bytes_raw() == ED_PRIVATE.public_key().public_bytes_raw()
    assert retired.verify(b"x", ED_PRIVATE.sign(b"x"))


def test_a_ring_contains_the_ids_of_its_keys() -> None:
    ring = hs_ring().rotate(kid="k2")
    assert "k1" in ring and "k2" in ring
    assert "k3" not in ring and None not in ring


def test_a_verify_only_ring_shows_no_active_key() -> None:
    assert repr(ed_ring().public()) == (
        "KeyRing(active=None, keys=[Key(kid='e1', alg='EdDSA', can_sign=False, retire_at=None)], "
        "source='<memory>')"
    )


def test_rotating_a_verify_only_ring_adds_an_hs256_key() -> None:
    rotated = ed_ring().public().rotate(kid="k2")
    assert rotated.active is not None
    assert (rotated.active.kid, rotated.active.alg, rotated.kids) == ("k2", "HS256", ("e1", "k2"))


def test_the_jwks_leaves_out_keys_retired_before_the_current_time() -> None:
    """``NOW`` is in 2023: a key retired then is retired at the current time."""
    ring = KeyRing(
        [
            Key("old", "EdDSA", private=Ed25519PrivateKey.generate(), retire_at=NOW),
            Key("e1", "EdDSA", private=ED_PRIVATE, retire_at=2**40),
        ],
        "e1",
    )
    assert [k["kid"] for k in ring.jwks()["keys"]] == ["e1"]


def test_an_unset_or_blank_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEYS", "  ")
    assert refusal(lambda: KeyRing.from_env("MY_KEYS")) == (
        "the environment variable is not set",
        "MY_KEYS",
        None,
    )


GOOD_JWK = ed_ring().jwks(now=NOW)["keys"][0]


@pytest.mark.parametrize(
    ("doc", "message", "key"),
    [
        ({"nokeys": []}, "expected a JWK set: an object with a 'keys' list", "keys"),
        ({"keys": {}}, "expected a JWK set: an object with a 'keys' list", "keys"),
        ([GOOD_JWK], "expected a JWK set: an object with a 'keys' list", "keys"),
        ("keys", "expected a JWK set: an object with a 'keys' list", "keys"),
        ({"keys": ["x"]}, "expected a JWK object", "keys[0]"),
        (
            {"keys": [GOOD_JWK, {**GOOD_JWK, "kid": ""}]},
            "expected a non-empty key id",
            "keys[1].kid",
        ),
        ({"keys": [{**GOOD_JWK, "kid": 5}]}, "expected a non-empty key id", "keys[0].kid"),
        ({"keys": [{**GOOD_JWK, "kid": None}]}, "expected a non-empty key id", "keys[0].kid"),
    ],
)
def test_bad_jwk_sets_say_what_is_wrong_and_name_the_jwks(doc: Any, message: str, key: str) -> None:
    """A JWK set is downloaded JSON: any value may come. Its source is "jwks" unless named."""
    assert refusal(lambda: KeyRing.from_jwks(doc)) == (message, key, "jwks")


def test_a_ring_from_a_jwk_set_is_named_jwks_by_default() -> None:
    assert KeyRing.from_jwks({"keys": [GOOD_JWK]}).source == "jwks"


def test_secrets_of_any_length_are_written_and_read_back_exactly() -> None:
    """Every length from 32 to 64 bytes, so every padding and every length modulo 4 and 5;
    the last byte makes the text of each length that is a multiple of 3 end in ``X``."""
    for size in range(32, 65):
        secret = hashlib.sha512(bytes([size])).digest()[: size - 1] + b"\x17"
        ring = KeyRing([Key("k1", "HS256", secret=secret)], "k1")
        assert orjson.loads(ring.to_json())["keys"][0]["secret"] == b64(secret)
        back = KeyRing.from_json(ring.to_json(), "keys.json")
        assert back.to_json() == ring.to_json()
        signature = back.get("k1").sign(b"x")  # type: ignore[union-attr]
        assert signature == hmac.new(secret, b"x", hashlib.sha256).digest()


def test_eddsa_keys_keep_their_retirement_time_through_a_key_file() -> None:
    public = ED_PRIVATE.public_key()
    ring = KeyRing(
        [
            Key("e0", "EdDSA", private=Ed25519PrivateKey.generate(), retire_at=NOW + 10),
            Key("e1", "EdDSA", public=public, retire_at=NOW + 20.5),
            Key("e2", "EdDSA", private=ED_PRIVATE),
        ],
        "e2",
    )
    back = KeyRing.from_json(ring.to_json(), "keys.json")
    retire = {kid: back.get(kid).retire_at for kid in back.kids}  # type: ignore[union-attr]
    assert retire == {"e0": NOW + 10, "e1": NOW + 20.5, "e2": None}


def test_key_file_write_errors_name_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("precious")
    assert refusal(lambda: write_keyring(path, hs_ring())) == (
        "the key file exists; pass force to overwrite it",
        None,
        str(path),
    )
    missing = tmp_path / "missing" / "keys.json"
    assert refusal(lambda: write_keyring(missing, hs_ring())) == (
        "cannot write the key file: No such file or directory",
        None,
        str(missing),
    )


class _AppearsMeanwhile(type(Path())):  # type: ignore[misc]
    """A path said not to exist when it does: another process made it after the check."""

    def exists(self, *args: Any, **kwargs: Any) -> bool:
        return False


def test_a_secret_file_made_after_the_check_is_still_not_overwritten(tmp_path: Path) -> None:
    path = _AppearsMeanwhile(tmp_path / "admin-token")
    Path(path).write_text("precious\n")
    assert refusal(lambda: generate_admin_token(path)) == (
        "the admin token file exists; pass force to overwrite it",
        None,
        str(path),
    )
    assert Path(path).read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir()] == ["admin-token"]


def test_rotating_a_key_file_without_a_retirement_leaves_the_old_key_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    write_keyring(path, hs_ring())
    ring = rotate_keyfile(path, clock=FakeClock())
    assert ring.active is not None and ring.active.kid != "k1" and ring.active.alg == "HS256"
    assert ring.get("k1").retire_at is None  # type: ignore[union-attr]
    assert KeyRing.load(path).kids == ring.kids
