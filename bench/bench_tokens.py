"""Token cost per request: our HS256 / EdDSA against PyJWT, in one run on one machine.

Run: ``python bench/bench_tokens.py [--seconds 0.5]``. Prints µs per
operation (best of five runs) and the ratios that justify hand-writing the
JWS: the referral signs one token per assignment, every app server verifies
one per request.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import secrets
import sys
import timeit
from collections.abc import Callable

import cryptography
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from affinity.tokens.jws import TokenIssuer, TokenVerifier
from affinity.tokens.keyring import Key, KeyRing


def measure(
    ops: list[tuple[str, Callable[[], object]]], seconds: float, rounds: int
) -> dict[str, float]:
    """Best µs per call of each op over ``rounds`` rounds of ``seconds`` each.

    Rounds interleave the ops, so a burst of load on a shared machine costs
    every op a round rather than one op all of its runs.
    """
    timers = [(name, timeit.Timer(fn)) for name, fn in ops]
    numbers = {name: max(1, int(t.autorange()[0] * seconds / 0.2)) for name, t in timers}
    best = dict.fromkeys(numbers, float("inf"))
    for _ in range(rounds):
        for name, timer in timers:
            elapsed = timer.timeit(numbers[name]) / numbers[name] * 1e6
            best[name] = min(best[name], elapsed)
    return best


def fresh_tokens(issuer: TokenIssuer, n: int) -> Callable[[], str]:
    """Distinct tokens, so verification misses the cache as a new client's first request does."""
    pool = [issuer.issue(f"s{i}", f"c{i}", "web")[0] for i in range(n)]
    return itertools.cycle(pool).__next__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="time per op per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (the best counts)")
    args = parser.parse_args()

    secret = secrets.token_bytes(32)
    hs = KeyRing([Key("k1", "HS256", secret=secret)], "k1")
    private = Ed25519PrivateKey.generate()
    ed = KeyRing([Key("e1", "EdDSA", private=private)], "e1")
    hs_issuer, ed_issuer = TokenIssuer(hs), TokenIssuer(ed)
    hs_check = TokenVerifier(hs, cache_size=0)
    ed_check = TokenVerifier(ed.public(), cache_size=0)
    cached = TokenVerifier(hs)
    hot, _ = hs_issuer.issue("s1", "c1", "web")
    cached.verify(hot)
    payload = jwt.decode(hot, secret, algorithms=["HS256"])
    pyjwt_token = jwt.encode(payload, secret, algorithm="HS256", headers={"kid": "k1"})
    pyjwt_ed = jwt.encode(payload, private, algorithm="EdDSA", headers={"kid": "e1"})
    public = private.public_key()

    next_hs, next_ed = fresh_tokens(hs_issuer, 50_000), fresh_tokens(ed_issuer, 2_000)
    ops: list[tuple[str, Callable[[], object]]] = [
        ("ours HS256 issue", lambda: hs_issuer.issue("s1", "c1", "web")),
        ("ours HS256 verify (no cache)", lambda: hs_check.verify(next_hs())),
        ("ours HS256 verify (cache hit)", lambda: cached.verify(hot)),
        ("ours EdDSA issue", lambda: ed_issuer.issue("s1", "c1", "web")),
        ("ours EdDSA verify (no cache)", lambda: ed_check.verify(next_ed())),
        ("PyJWT HS256 encode", lambda: jwt.encode(payload, secret, "HS256", {"kid": "k1"})),
        (
            "PyJWT HS256 decode",
            lambda: jwt.decode(pyjwt_token, secret, ["HS256"], issuer="affinity"),
        ),
        ("PyJWT EdDSA encode", lambda: jwt.encode(payload, private, "EdDSA", {"kid": "e1"})),
        ("PyJWT EdDSA decode", lambda: jwt.decode(pyjwt_ed, public, ["EdDSA"], issuer="affinity")),
    ]
    us = measure(ops, args.seconds, args.rounds)
    print(
        f"python {platform.python_version()}, PyJWT {jwt.__version__}, "
        f"cryptography {cryptography.__version__}, {platform.machine()}"
    )
    print(f"{'operation':32} {'µs/op':>9}")
    for name, value in us.items():
        print(f"{name:32} {value:9.2f}")
    print()
    ratios = [
        ("PyJWT encode / ours HS256 issue", "PyJWT HS256 encode", "ours HS256 issue"),
        ("PyJWT decode / ours HS256 verify", "PyJWT HS256 decode", "ours HS256 verify (no cache)"),
        ("PyJWT decode / ours cache hit", "PyJWT HS256 decode", "ours HS256 verify (cache hit)"),
        ("PyJWT EdDSA encode / ours issue", "PyJWT EdDSA encode", "ours EdDSA issue"),
        ("PyJWT EdDSA decode / ours verify", "PyJWT EdDSA decode", "ours EdDSA verify (no cache)"),
        ("ours EdDSA / HS256 issue", "ours EdDSA issue", "ours HS256 issue"),
        (
            "ours EdDSA / HS256 verify",
            "ours EdDSA verify (no cache)",
            "ours HS256 verify (no cache)",
        ),
    ]
    for label, top, bottom in ratios:
        print(f"{label:32} {us[top] / us[bottom]:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
