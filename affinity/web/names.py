"""Checks for identifiers and URLs that end up in tokens, headers and redirects.

Server ids appear in tokens, headers and query strings; server URLs become the
origin of redirects. Both are checked strictly where they enter (config file,
admin API, registry) so nothing downstream has to be careful.
"""

from __future__ import annotations

import re
import urllib.parse

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def is_valid_id(value: object) -> bool:
    """Server, service and settings names: 1-64 of letters, digits, ``.``, ``_``, ``-``."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: object, what: str = "server id") -> str:
    """Return ``value`` if it is a valid name, else raise ValueError saying what is expected."""
    if not is_valid_id(value):
        msg = (
            f"{what} {value!r} is not valid; expected 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
        raise ValueError(msg)
    assert isinstance(value, str)
    return value


def check_origin(value: object, *, allow_http: bool = True) -> str:
    """Return the normalised origin ``scheme://host[:port]`` of a server URL, or raise ValueError.

    Only an origin is allowed: no user info, path, query or fragment, so a
    redirect built from it can only ever point at that host.
    """
    if not isinstance(value, str) or any(c in value for c in "\r\n\t \\"):
        msg = f"server url {value!r} is not valid; expected 'https://host[:port]'"
        raise ValueError(msg)
    parts = urllib.parse.urlsplit(value)
    schemes = ("https", "http") if allow_http else ("https",)
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.hostname or ""
    if (
        parts.scheme not in schemes
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or port == -1
        or not (_HOST.fullmatch(host) or _is_ip(host))
    ):
        msg = f"server url {value!r} is not valid; expected only '{schemes[0]}://host[:port]'"
        raise ValueError(msg)
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}" + (f":{port}" if port is not None else "")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
