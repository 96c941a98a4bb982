"""Checks for identifiers and URLs that end up in tokens, headers and redirects.

Server ids appear in tokens, headers and query strings; server URLs become the
origin of redirects and of the referral's health checks. Both are checked
strictly where they enter, by one function, :func:`check_server`, whatever the
source (config file, admin API, state file, Consul catalog), so nothing
downstream has to be careful.

A server origin is ``https://host[:port]``: plain ``http://`` only when
``registry.allow_http`` is set, and never port 0. Hosts that would point the
referral somewhere else than an app server are refused unless
``registry.allow_hosts`` names them (the host, or a network holding the
address): numeric forms other than a dotted quad (``2130706433``,
``0x7f000001``, ``127.1``, which some resolvers read as addresses),
link-local, unspecified, multicast and reserved addresses, and the cloud
metadata services.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from affinity.config import Config
from affinity.errors import ConfigError
from affinity.models import Server

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
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254")
)
"""Cloud instance metadata services (AWS, GCP, Azure, Oracle; Alibaba; AWS over IPv6)."""
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog"})
_REFUSED_KINDS = (
    ("is_link_local", "a link-local address"),
    ("is_unspecified", "the unspecified address"),
    ("is_multicast", "a multicast address"),
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginRules:
    """Which server origins a referral accepts: ``[registry] allow_http`` and ``allow_hosts``."""

    allow_http: bool = False
    names: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> OriginRules:
        """The rules of ``[registry]``; an entry of ``allow_hosts`` that is neither a host
        nor a network is a ConfigError naming it."""
        names: set[str] = set()
        networks: list[Network] = []
        for i, entry in enumerate(config.registry.allow_hosts):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host = entry.lower()
            if not _HOST.fullmatch(host):
                msg = f"{entry!r} is neither a host name nor an address or network"
                raise ConfigError(msg, key=f"registry.allow_hosts[{i}]", source=config.source)
            names.add(host)
        return cls(
            allow_http=config.registry.allow_http,
            names=frozenset(names),
            networks=tuple(networks),
        )

    def allows(self, host: str) -> bool:
        """True when ``allow_hosts`` names ``host`` or holds its address."""
        if host.lower() in self.names:
            return True
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)


STRICT = OriginRules()
"""The rules with nothing opted in: HTTPS only, no host allowed past the checks."""


def check_server_origin(value: object, rules: OriginRules = STRICT) -> str:
    """The normalised origin of a server URL that ``rules`` accept, or ValueError saying why."""
    origin = check_origin(value)
    if origin.startswith("http://") and not rules.allow_http:
        msg = (
            f"server url {value!r} is refused: plain http:// sends tokens and cookies in clear "
            "(set registry.allow_http = true to allow it)"
        )
        raise ValueError(msg)
    parts = urllib.parse.urlsplit(origin)
    if parts.port == 0:
        raise ValueError(f"server url {value!r} is refused: port 0 is not a port to connect to")
    host = parts.hostname or ""
    problem = host_problem(host)
    if problem and not rules.allows(host):
        msg = f"server url {value!r} is refused: {problem} (name it in registry.allow_hosts)"
        raise ValueError(msg)
    return origin


def host_problem(host: str) -> str:
    """Why a server's host may point somewhere other than an app server, or ""."""
    address = _address(host)
    if address is None:
        if host.lower() in METADATA_NAMES:
            return f"{host!r} is a cloud metadata service"
        if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
            return f"{host!r} is a numeric host other than a dotted quad"
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return f"{host!r} is a cloud metadata service"
    for kind, what in _REFUSED_KINDS:
        if getattr(address, kind):
            return f"{host!r} is {what}"
    if address.is_reserved and not address.is_loopback:
        return f"{host!r} is a reserved address"
    if address in _THIS_NETWORK or address == _BROADCAST:
        return f"{host!r} is not an address to connect to"
    return ""


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


MAX_WEIGHT = 10_000


def check_server(
    *,
    server_id: object,
    service: object,
    url: object,
    weight: object = 1,
    meta: object = None,
    rules: OriginRules = STRICT,
) -> Server:
    """A server entry, whatever its source, checked whole: id, service, origin, weight, meta.

    Raises ValueError saying what is wrong; the caller refuses the entry
    (an answer ``400``, a config error, a skipped registry entry).
    """
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight {weight!r} is not valid; expected an integer from 0 to 10000")
    return Server(
        id=check_id(server_id),
        service=check_id(service, "service"),
        url=check_server_origin(url, rules),
        weight=weight,
        meta=check_meta({} if meta is None else meta),
    )


def check_meta(meta: object) -> Mapping[str, str]:
    """Free-form server metadata: up to 64 string keys (128 characters) and values (512)."""
    if (
        not isinstance(meta, dict)
        or len(meta) > 64
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 512
            for k, v in meta.items()
        )
    ):
        raise ValueError("meta must be an object of up to 64 string keys and string values")
    checked: dict[str, Any] = dict(meta)
    return checked
