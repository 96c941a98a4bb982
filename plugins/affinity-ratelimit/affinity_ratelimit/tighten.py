"""Whether a shared document only tightens the file's limits.

The config file is the operator's; the shared document can be written by
anyone holding the admin token, or straight into the registry. So, unless the
file sets ``allow_loosening = true``, a document may lower rates and bursts,
add limits no looser than the file's, key by address instead of by client,
and widen the roles and buckets limited, but not remove, loosen or move a
limit of the file, nor exempt more paths.
"""

from __future__ import annotations

from affinity_ratelimit.policy import Limit, Policy


def loosening(file: Policy, shared: Policy) -> str | None:
    """What ``shared`` would loosen of the file's policy ``file``, or None."""
    if not file.limits:
        return None
    if not file.roles <= shared.roles:
        return f"it limits only the roles {sorted(shared.roles)}, the file {sorted(file.roles)}"
    if not shared.exempt <= file.exempt:
        return f"it exempts {sorted(shared.exempt - file.exempt)}, which the file does not"
    if shared.ipv4_prefix > file.ipv4_prefix or shared.ipv6_prefix > file.ipv6_prefix:
        return "it counts addresses in smaller buckets (ipv4_prefix, ipv6_prefix) than the file"
    theirs = {limit.name: limit for limit in _all(shared)}
    for mine in _all(file):
        other = theirs.pop(mine.name, None)
        if other is None:
            return f"it removes the file's limit {mine.name!r}"
        problem = _looser(other, mine)
        if problem:
            return f"limit {mine.name!r}: {problem}"
        if other.prefix != mine.prefix:
            return f"it moves the file's limit {mine.name!r} from {mine.prefix!r}"
    for added in theirs.values():  # a new limit takes over its prefix from the file's
        for role in sorted(added.roles):
            base = file.select(role, added.prefix)
            problem = _looser(added, base) if base is not None else ""
            if base is not None and problem:
                return f"new limit {added.name!r} takes over from {base.name!r}: {problem}"
    return None


def _looser(other: Limit, mine: Limit) -> str:
    if other.rate > mine.rate or other.burst > mine.burst:
        return (
            f"rate {other.rate:g}, burst {other.burst} over the file's {mine.rate:g}, {mine.burst}"
        )
    if not mine.roles <= other.roles:
        return f"roles {sorted(other.roles)} leave out some of the file's {sorted(mine.roles)}"
    if mine.key == "ip" and other.key != "ip":
        return "keyed by client where the file keys by address (a new token buys a new allowance)"
    return ""


def _all(policy: Policy) -> list[Limit]:
    return [limit for limits in policy.limits.values() for limit in limits]
