"""Rendezvous (highest-random-weight) hashing: pure functions, stable across processes.

Every referral worker and replica must map a client id to the same server
when they share a view of the pool, so the hash is BLAKE2b with an 8-byte
digest over a length-prefixed key and the member id, never Python's
``hash()`` (salted per process). Weighted HRW scores a member as
``-weight / ln(u)`` with ``u`` the hash mapped into the open interval
(0, 1): the member with the highest score wins, each member wins a share of
keys proportional to its weight, and removing a member moves only the keys
it held.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from hashlib import blake2b

__all__ = ["choose", "hash64", "key_prefix", "rank", "score", "score_prefixed", "unit"]

_SCALE = 2.0**-52


def key_prefix(key: str) -> bytes:
    """The bytes hashed before a member id: the key's length, then the key (UTF-8).

    The length makes the pair unambiguous: ``("a\\0", "b")`` and ``("a", "\\0b")``
    hash differently. Compute it once per key when scoring many members.
    """
    data = key.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data


def hash64(data: bytes) -> int:
    """An unsigned 64-bit hash of ``data`` (BLAKE2b, 8-byte digest, big-endian)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def unit(key: str, member: str) -> float:
    """The hash of (key, member) as a float in the open interval (0, 1)."""
    return _unit(key_prefix(key) + member.encode("utf-8", "surrogatepass"))


def _unit(data: bytes) -> float:
    # The top 52 bits plus one half: exact in a double, never 0.0 nor 1.0.
    return ((hash64(data) >> 12) + 0.5) * _SCALE


def score_prefixed(prefix: bytes, member: bytes, weight: float = 1.0) -> float:
    """The weighted HRW score of a member for a key given as :func:`key_prefix` bytes.

    The fast form for scanning a pool: the caller encodes the key once and each
    member id once (``member.encode()``).
    """
    return -weight / math.log(_unit(prefix + member))


def score(key: str, member: str, weight: float = 1.0) -> float:
    """The weighted HRW score of ``member`` for ``key``: ``-weight / ln(unit(key, member))``.

    :raises ValueError: when ``weight`` is not a positive finite number.
    """
    _check_weight(member, weight)
    return score_prefixed(key_prefix(key), member.encode("utf-8", "surrogatepass"), weight)


def rank(key: str, members: Iterable[tuple[str, float]]) -> list[str]:
    """Member ids ordered by descending score for ``key``; ``members`` are (id, weight) pairs.

    Ties (vanishingly rare) are broken by id so the order is total and the same
    everywhere.

    :raises ValueError: when a weight is not a positive finite number.
    """
    prefix = key_prefix(key)
    scored = []
    for member, weight in members:
        _check_weight(member, weight)
        s = score_prefixed(prefix, member.encode("utf-8", "surrogatepass"), weight)
        scored.append((-s, member))
    scored.sort()
    return [member for _, member in scored]


def choose(key: str, members: Iterable[tuple[str, float]]) -> str | None:
    """The member with the highest score for ``key`` (ties: lowest id), or None if there are none.

    :raises ValueError: when a weight is not a positive finite number.
    """
    prefix = key_prefix(key)
    best: tuple[float, str] | None = None
    for member, weight in members:
        _check_weight(member, weight)
        s = -score_prefixed(prefix, member.encode("utf-8", "surrogatepass"), weight)
        if best is None or (s, member) < best:
            best = (s, member)
    return None if best is None else best[1]


def _check_weight(member: str, weight: float) -> None:
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"weight of {member!r} must be a positive finite number, got {weight!r}")
