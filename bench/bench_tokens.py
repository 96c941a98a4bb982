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

from affinity.tokens import Key, KeyRing, TokenIssuer, TokenVerifier


def per_op(fn: Callable[[], object], seconds: float) -> float:
    """Best-of-five µs per call, with the loop count sized to ``seconds`` per run."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * seconds / 0.2))
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def fresh_tokens(issuer: TokenIssuer, n: int) -> Callable[[], str]:
    """Distinct tokens, so verification misses the cache as a new client's first request does."""
    pool = [issuer.issue(f"s{i}", f"c{i}", "web")[0] for i in range(n)]
    return itertools.cycle(pool).__next__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement run")
    args = parser.parse_args()
    s = args.seconds

    secret = secrets.token_bytes(32)
    hs = KeyRing([Key("k1", "HS256", secret=secret)], "k1")
    ed = KeyRing.generate("EdDSA", kid="e1")
    hs_issuer, ed_issuer = TokenIssuer(hs), TokenIssuer(ed)
    hs_check = TokenVerifier(hs, cache_size=0)
    ed_check = TokenVerifier(ed.public(), cache_size=0)
    cached = TokenVerifier(hs)
    hot, _ = hs_issuer.issue("s1", "c1", "web")
    cached.verify(hot)
    payload = jwt.decode(hot, secret, algorithms=["HS256"])
    pyjwt_token = jwt.encode(payload, secret, algorithm="HS256", headers={"kid": "k1"})

    next_hs, next_ed = fresh_tokens(hs_issuer, 50_000), fresh_tokens(ed_issuer, 2_000)
    rows = [
        ("ours HS256 issue", per_op(lambda: hs_issuer.issue("s1", "c1", "web"), s)),
        ("ours HS256 verify (no cache)", per_op(lambda: hs_check.verify(next_hs()), s)),
        ("ours HS256 verify (cache hit)", per_op(lambda: cached.verify(hot), s)),
        ("ours EdDSA issue", per_op(lambda: ed_issuer.issue("s1", "c1", "web"), s)),
        ("ours EdDSA verify (no cache)", per_op(lambda: ed_check.verify(next_ed()), s)),
        (
            "PyJWT HS256 encode",
            per_op(lambda: jwt.encode(payload, secret, "HS256", {"kid": "k1"}), s),
        ),
        (
            "PyJWT HS256 decode",
            per_op(lambda: jwt.decode(pyjwt_token, secret, ["HS256"], issuer="affinity"), s),
        ),
    ]
    us = dict(rows)
    print(
        f"python {platform.python_version()}, PyJWT {jwt.__version__}, "
        f"cryptography {cryptography.__version__}, {platform.machine()}"
    )
    print(f"{'operation':32} {'µs/op':>9}")
    for name, value in rows:
        print(f"{name:32} {value:9.2f}")
    print()
    ratios = [
        ("PyJWT encode / ours HS256 issue", "PyJWT HS256 encode", "ours HS256 issue"),
        ("PyJWT decode / ours HS256 verify", "PyJWT HS256 decode", "ours HS256 verify (no cache)"),
        ("PyJWT decode / ours cache hit", "PyJWT HS256 decode", "ours HS256 verify (cache hit)"),
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
