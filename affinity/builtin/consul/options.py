"""``[registry.options]`` for ``backend = "consul"``: declared once, checked before connecting.

Explicit settings always win over python-consul2's environment variables
(``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_SSL``, ``CONSUL_HTTP_TOKEN``), which that
library lets override its constructor arguments; the environment is only a
fallback when the file says nothing. The ACL token comes, in this order, from
``AFFINITY_CONSUL_TOKEN`` (affinity's own override, like every ``AFFINITY_*``
variable), the ``token_file`` option, then ``CONSUL_HTTP_TOKEN``. It is kept
out of ``repr`` so no log line or error message can carry it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from affinity.config import Config, ServerSettings
from affinity.convert import env_name
from affinity.plugin.options import Origin, option, resolved

TOKEN_ENV = "AFFINITY_CONSUL_TOKEN"
CONSUL_TOKEN_ENV = "CONSUL_HTTP_TOKEN"
CONSUL_ADDR_ENV = "CONSUL_HTTP_ADDR"
CONSUL_SSL_ENV = "CONSUL_HTTP_SSL"
KEY = "registry.options"
HEARTBEAT = ServerSettings().heartbeat_interval
"""The app server's default ``server.heartbeat_interval``: how soon it registers again."""

_HOST = r"[A-Za-z0-9.:\[\]-]{1,253}"
_TAG = r"[A-Za-z0-9][A-Za-z0-9._:=-]{0,127}"
_TAG_TEXT = "a tag of letters, digits, '._:=-'"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsulOptions:
    """Everything the Consul backend needs, in seconds and plain values.

    ``wait`` bounds every blocking query; ``timeout`` bounds every other call
    and is added on top of ``wait`` (plus Consul's ``wait/16`` jitter) for
    blocking ones, so a blocking read never outlives its HTTP timeout.
    """

    address: str = option(
        "",
        help="The agent: `host:port`, `http://host:port` or `https://host:port`. "
        "Unset: `CONSUL_HTTP_ADDR` (and `CONSUL_HTTP_SSL`), else `127.0.0.1:8500`.",
    )
    scheme: Literal["http", "https"] = option(
        "http", help="The agent's scheme, as a separate key (not with `address`)."
    )
    host: str = option(
        "127.0.0.1",
        pattern=_HOST,
        expected="a host name or IP address",
        help="The agent's host (not with `address`).",
    )
    port: int = option(8500, low=1, high=65535, help="The agent's port (not with `address`).")
    ca_file: Path | None = option(None, help="CA of an `https` agent.")
    token_file: Path | None = option(
        None,
        help="File holding the ACL token (`AFFINITY_CONSUL_TOKEN` wins over it, "
        "`CONSUL_HTTP_TOKEN` is the fallback).",
    )
    datacenter: str = option(
        "",
        pattern=r"[A-Za-z0-9_-]{0,64}",
        expected="a datacenter name",
        help="`dc` of every call; empty: the agent's.",
    )
    service_prefix: str = option(
        "",
        pattern=r"[A-Za-z0-9_-]*",
        expected="letters, digits, '_' or '-' (or empty)",
        help="Prepended to service names in Consul (`web` becomes `<prefix>web`).",
    )
    tag: str = option(
        "affinity",
        pattern=_TAG,
        expected=_TAG_TEXT,
        help="Tag every registration carries; discovery looks for it.",
    )
    tags: tuple[str, ...] = option((), pattern=_TAG, expected=_TAG_TEXT, help="More tags.")
    discover: bool = option(True, help="Also watch services found in the catalog with `tag`.")
    kv_prefix: str = option(
        "affinity/",
        pattern=r"([A-Za-z0-9_-][A-Za-z0-9._-]*/)+",
        expected="a key prefix like 'affinity/' (segments of letters, digits, '._-', "
        "not starting with '.', ending with '/')",
        help="Where drain flags and shared settings live in the KV store.",
    )
    wait: float = option(30.0, low=0.1, high=300.0, help="Seconds a blocking read waits.")
    timeout: float = option(
        10.0,
        low=0.1,
        high=120.0,
        help="Seconds for other calls; added to `wait` for blocking ones.",
    )
    stale_reads: bool = option(
        True, help="Read with `?stale` (any server answers, also without a leader)."
    )
    watch_rate: float = option(
        5.0, low=0.01, high=1000.0, help="Reads per second each loop may make under churn."
    )
    watch_burst: int = option(
        10, low=1, high=1000, help="Reads a loop may make at once before the rate applies."
    )
    backoff_cap: float = option(
        5.0, low=0.1, high=300.0, help="Longest pause between failed reads (at most `wait`)."
    )
    reset_probe: float = option(
        5.0,
        low=0.0,
        high=300.0,
        help="Seconds between non-blocking reads each watch makes beside its blocking one, "
        "to notice an index that went backwards before the wait ends; 0: off.",
    )
    reset_grace: float = option(
        0.0,
        low=0.0,
        high=3600.0,
        help="Seconds a referral keeps the last servers of a service (marked stale) after "
        "the agent came back without them; 0: the server heartbeat (5 s) + `check_interval` "
        "+ `check_timeout`.",
    )
    check_interval: float = option(
        1.0, low=0.01, high=3600.0, help="HTTP check interval (Consul raises it to at least 1 s)."
    )
    check_timeout: float = option(2.0, low=0.01, high=600.0, help="HTTP check timeout.")
    deregister_critical_service_after: float = option(
        60.0,
        low=0.0,
        high=30 * 86400.0,
        help="The agent removes a service critical this long (Consul's minimum is 60 s); 0: never.",
    )
    check_host: str = option(
        "",
        pattern=_HOST,
        expected="a host name or IP address",
        help="Address the agent uses to reach the server; empty: the URL's host.",
    )
    tls_server_name: str = option(
        "",
        pattern=_HOST,
        expected="a host name",
        help="Name the check verifies the certificate for; empty: the URL's host when "
        "`check_host` is set.",
    )
    tls_skip_verify: bool = option(
        False, help="Do not verify the server's certificate in the check."
    )
    token: str | None = resolved(None, secret=True)
    token_source: str = resolved("")

    @property
    def grace(self) -> float:
        """``reset_grace``, or the time a server needs to re-register and pass its check."""
        return self.reset_grace or HEARTBEAT + self.check_interval + self.check_timeout

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def consul_name(self, service: str) -> str:
        """The Consul service name of an affinity service."""
        return self.service_prefix + service


def parse_options(config: Config, env: Mapping[str, str] | None = None) -> ConsulOptions:
    """``config.registry.options`` converted and resolved; a ConfigError names the bad key."""
    env = os.environ if env is None else env
    table = config.registry.options
    origin = Origin(KEY, config.source)
    options = config.read(ConsulOptions, table, KEY)
    given = {
        key
        for key in ("address", "scheme", "host", "port")
        if key in table or env_name(f"{KEY}.{key}") in config.env
    }
    changes = {**_address(options, given, env, origin), **_token(options, env, origin)}
    options = dataclasses.replace(options, **changes)
    if options.ca_file is not None and options.scheme != "https":
        raise origin.error("a CA file is only used with an https agent address", "ca_file")
    return options


def _address(
    options: ConsulOptions, given: set[str], env: Mapping[str, str], origin: Origin
) -> dict[str, Any]:
    """Where the agent is: ``address``, or ``scheme``/``host``/``port``, else the environment."""
    if "address" in given and len(given) > 1:
        raise origin.error("give either address or scheme/host/port, not both", "address")
    if "address" in given:
        return _split_address(options.address, origin)
    if not given and env.get(CONSUL_ADDR_ENV):
        found = _split_address(env[CONSUL_ADDR_ENV], origin, CONSUL_ADDR_ENV)
        if "://" not in env[CONSUL_ADDR_ENV] and env.get(CONSUL_SSL_ENV) == "true":
            found["scheme"] = "https"
        return found
    if not given and env.get(CONSUL_SSL_ENV) == "true":
        return {"scheme": "https"}
    return {}


def _split_address(text: str, origin: Origin, where: str = "address") -> dict[str, Any]:
    expected = "'host:port', 'http://host:port' or 'https://host:port'"
    raw = text if "://" in text else f"http://{text}"
    parts = urllib.parse.urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.username is not None
        or not re.fullmatch(_HOST, parts.hostname)
    ):
        if where != "address":
            msg = f"the environment variable {where} is {text!r}; expected {expected}"
            raise origin.error(msg, "address")
        raise origin.error(f"expected {expected}, got {text!r}", "address")
    return {"scheme": parts.scheme, "host": parts.hostname, "port": port or 8500}


def _token(options: ConsulOptions, env: Mapping[str, str], origin: Origin) -> dict[str, Any]:
    path = options.token_file
    if env.get(TOKEN_ENV, "").strip():
        return {"token": env[TOKEN_ENV].strip(), "token_source": TOKEN_ENV}
    if path is not None:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            msg = f"cannot read the Consul token file {str(path)!r}: {exc.strerror}"
            raise origin.error(msg, "token_file") from exc
        if not token:
            raise origin.error(f"the Consul token file {str(path)!r} is empty", "token_file")
        return {"token": token, "token_source": "token_file"}
    if env.get(CONSUL_TOKEN_ENV, "").strip():
        return {"token": env[CONSUL_TOKEN_ENV].strip(), "token_source": CONSUL_TOKEN_ENV}
    return {}


def go_duration(seconds: float) -> str:
    """A Go duration string Consul accepts (``"1500ms"``); a bare number would be nanoseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)")
_UNIT: Mapping[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_go_duration(text: str) -> float | None:
    """Seconds in a duration this module wrote (``"1500ms"``, ``"30s"``); None otherwise."""
    match = _GO_DURATION.fullmatch(text)
    return float(match.group(1)) * _UNIT[match.group(2)] if match else None
