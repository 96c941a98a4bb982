"""Path comparison forms for request filters: one request path, every way a server might read it.

The core hands filters a path it has already normalised (percent-decoded once,
dot segments and repeated slashes removed). A rule must not depend on that
alone: Envoy CVE-2019-9901 (``/info/../private``), CVE-2021-29492 (escaped
``%2F``) and the Tomcat ``..;`` family all come from a filter and a router
reading one path two ways. :func:`path_variants` returns every reading a
plausible server could make: a deny rule applies when *any* of them falls
under its prefix, and an exemption only when *all* of them do. Used by the
``affinity-ipfilter`` and ``affinity-ratelimit`` plugins, and meant for any
filter plugin.
"""

from __future__ import annotations

import urllib.parse

MAX_DECODE_ROUNDS = 3
"""Percent-decoding stops after this many rounds (``%25252e`` needs three)."""

_SPECIAL = frozenset("%;\\")


def _plain(path: str) -> bool:
    """True when no reading of ``path`` differs from its casefolded self (the common case)."""
    return (
        path[:1] == "/"
        and (path == "/" or path[-1] != "/")
        and _SPECIAL.isdisjoint(path)
        and "//" not in path
        and "/./" not in path
        and "/../" not in path
        and not path.endswith(("/.", "/.."))
    )


def normalise_path(
    path: str, *, decode: int = 1, params: bool = False, backslash: bool = False
) -> str:
    """The comparison form of a path: rooted, dot segments resolved, no empty segments, casefolded.

    ``/x/../admin``, ``/%61dmin``, ``//admin`` and ``/ADMIN/`` all give ``/admin``.

    :param path: A request path (no query string).
    :param decode: How many rounds of percent-decoding to apply first (0: none).
    :param params: Also cut each segment at ``;`` (path parameters, as Tomcat reads ``..;``).
    :param backslash: Also read ``\\`` as a separator (as IIS and some proxies do).
    """
    if _plain(path):
        return path.casefold()
    for _ in range(decode):
        decoded = urllib.parse.unquote(path, errors="replace")
        if decoded == path:
            break
        path = decoded
    if backslash:
        path = path.replace("\\", "/")
    segments: list[str] = []
    for raw in path.split("/"):
        segment = raw.split(";", 1)[0] if params else raw
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return ("/" + "/".join(segments)).casefold()


def path_variants(path: str) -> frozenset[str]:
    """Every comparison form of ``path`` a router, proxy or app framework might see.

    Combines: the path as given or decoded once more or decoded to a fixed
    point; path parameters kept or cut; backslash literal or a separator. A
    path without ``%``, ``;`` or ``\\`` has exactly one form.
    """
    if _plain(path):
        return frozenset((path.casefold(),))
    rounds = (0, 1, MAX_DECODE_ROUNDS) if "%" in path else (0,)
    param_modes = (False, True) if ";" in path else (False,)
    slash_modes = (False, True) if "\\" in path else (False,)
    return frozenset(
        normalise_path(path, decode=r, params=p, backslash=b)
        for r in rounds
        for p in param_modes
        for b in slash_modes
    )


def ancestors(path: str) -> list[str]:
    """The prefixes a normalised path falls under, longest first: ``/a/b`` → ``/a/b, /a, /``."""
    out = [path]
    while path != "/":
        path = path.rsplit("/", 1)[0] or "/"
        out.append(path)
    return out


def normalise_prefix(prefix: str) -> str:
    """A configured prefix in comparison form (decoded once, so ``/%61dmin`` means ``/admin``)."""
    return normalise_path(prefix, decode=1)
