"""``[registry.options]`` for ``backend = "consul"``: parsed and validated before anything connects.

Explicit settings always win over python-consul2's environment variables
(``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_SSL``, ``CONSUL_HTTP_TOKEN``), which that
library lets override its constructor arguments; the environment is only a
fallback when the file says nothing. The ACL token comes, in this order, from
``AFFINITY_CONSUL_TOKEN`` (affinity's own override, like every ``AFFINITY_*``
variable), the ``token_file`` option, then ``CONSUL_HTTP_TOKEN``. It is kept
out of ``repr`` so no log line or error message can carry it.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affinity.config import Config
from affinity.errors import ConfigError

TOKEN_ENV = "AFFINITY_CONSUL_TOKEN"
CONSUL_TOKEN_ENV = "CONSUL_HTTP_TOKEN"
CONSUL_ADDR_ENV = "CONSUL_HTTP_ADDR"
CONSUL_SSL_ENV = "CONSUL_HTTP_SSL"

_KV_PREFIX = re.compile(r"([A-Za-z0-9_-][A-Za-z0-9._-]*/)+")
_NAME_PREFIX = re.compile(r"[A-Za-z0-9_-]*")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,253}")
_DC = re.compile(r"[A-Za-z0-9_-]{0,64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsulOptions:
    """Everything the Consul backend needs, in seconds and plain values.

    ``wait`` bounds every blocking query; ``timeout`` bounds every other call
    and is added on top of ``wait`` (plus Consul's ``wait/16`` jitter) for
    blocking ones, so a blocking read never outlives its HTTP timeout.
    """

    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = 8500
    ca_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    token_source: str = ""
    datacenter: str = ""
    service_prefix: str = ""
    tag: str = "affinity"
    tags: tuple[str, ...] = ()
    discover: bool = True
    kv_prefix: str = "affinity/"
    wait: float = 30.0
    timeout: float = 10.0
    stale_reads: bool = True
    watch_rate: float = 5.0
    watch_burst: int = 10
    backoff_cap: float = 5.0
    check_interval: float = 1.0
    check_timeout: float = 2.0
    deregister_critical_service_after: float = 60.0
    check_host: str = ""
    tls_server_name: str = ""
    tls_skip_verify: bool = False

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def consul_name(self, service: str) -> str:
        """The Consul service name of an affinity service."""
        return self.service_prefix + service


class _Reader:
    """Reads one options table, naming ``registry.options.<key>`` in every error."""

    def __init__(self, table: Mapping[str, Any], source: str) -> None:
        self.table = table
        self.source = source

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=f"registry.options.{key}", source=self.source)

    def get(self, key: str, kind: type[Any] | tuple[type[Any], ...], expected: str) -> Any:
        value = self.table.get(key)
        if value is None:
            return None
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    def text(self, key: str, pattern: re.Pattern[str], expected: str) -> str | None:
        value = self.get(key, str, expected)
        if value is not None and not pattern.fullmatch(value):
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value  # type: ignore[no-any-return]

    def seconds(self, key: str, low: float, high: float) -> float | None:
        value = self.get(key, (int, float), "a number of seconds")
        if value is not None and not low <= value <= high:
            raise self.error(
                key, f"expected a number of seconds from {low} to {high}, got {value!r}"
            )
        return None if value is None else float(value)

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.get(key, int, f"an integer from {low} to {high}")
        if value is not None and not low <= value <= high:
            raise self.error(key, f"expected an integer from {low} to {high}, got {value!r}")
        return value  # type: ignore[no-any-return]

    def path(self, key: str, base: Path) -> Path | None:
        value = self.get(key, str, "a file path")
        return None if value is None else base / Path(value).expanduser()


KNOWN = frozenset(
    {
        "address",
        "scheme",
        "host",
        "port",
        "ca_file",
        "token_file",
        "datacenter",
        "service_prefix",
        "tag",
        "tags",
        "discover",
        "kv_prefix",
        "wait",
        "timeout",
        "stale_reads",
        "watch_rate",
        "watch_burst",
        "backoff_cap",
        "check_interval",
        "check_timeout",
        "deregister_critical_service_after",
        "check_host",
        "tls_server_name",
        "tls_skip_verify",
    }
)


def parse_options(config: Config, env: Mapping[str, str] | None = None) -> ConsulOptions:
    """Validate ``config.registry.options``; a :class:`ConfigError` names the bad key."""
    env = os.environ if env is None else env
    reader = _Reader(config.registry.options, config.source)
    for key in reader.table:
        if key not in KNOWN:
            raise reader.error(key, f"unknown option; expected one of {sorted(KNOWN)}")
    base = _base_dir(config.source)
    values: dict[str, Any] = {**_address(reader, env), **_token(reader, env, base)}
    for parse in (_naming, _timing, _check):
        values.update(parse(reader))
    values["ca_file"] = reader.path("ca_file", base)
    if values["ca_file"] is not None and values["scheme"] != "https":
        raise reader.error("ca_file", "a CA file is only used with an https agent address")
    return ConsulOptions(**{k: v for k, v in values.items() if v is not None})


def _base_dir(source: str) -> Path:
    path = Path(source)
    return path.resolve().parent if path.is_file() else Path.cwd()


def _address(reader: _Reader, env: Mapping[str, str]) -> dict[str, Any]:
    """Where the agent is: ``address``, or ``scheme``/``host``/``port``, else the environment."""
    explicit = [k for k in ("address", "scheme", "host", "port") if k in reader.table]
    if "address" in explicit and len(explicit) > 1:
        raise reader.error("address", "give either address or scheme/host/port, not both")
    if "address" in explicit:
        return _split_address(reader, reader.get("address", str, "'host:port' or a URL"))
    if not explicit and env.get(CONSUL_ADDR_ENV):
        found = _split_address(reader, env[CONSUL_ADDR_ENV], CONSUL_ADDR_ENV)
        if "://" not in env[CONSUL_ADDR_ENV] and env.get(CONSUL_SSL_ENV) == "true":
            found["scheme"] = "https"
        return found
    scheme = reader.get("scheme", str, "'http' or 'https'")
    if scheme is not None and scheme not in ("http", "https"):
        raise reader.error("scheme", f"expected 'http' or 'https', got {scheme!r}")
    if scheme is None and not explicit and env.get(CONSUL_SSL_ENV) == "true":
        scheme = "https"
    return {
        "scheme": scheme or "http",
        "host": reader.text("host", _HOST, "a host name or IP address"),
        "port": reader.integer("port", 1, 65535),
    }


def _split_address(reader: _Reader, text: str, where: str = "address") -> dict[str, Any]:
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
        or not _HOST.fullmatch(parts.hostname)
    ):
        if where != "address":
            msg = f"the environment variable {where} is {text!r}; expected {expected}"
            raise reader.error("address", msg)
        raise reader.error("address", f"expected {expected}, got {text!r}")
    return {"scheme": parts.scheme, "host": parts.hostname, "port": port or 8500}


def _token(reader: _Reader, env: Mapping[str, str], base: Path) -> dict[str, Any]:
    path = reader.path("token_file", base)
    if env.get(TOKEN_ENV, "").strip():
        return {"token": env[TOKEN_ENV].strip(), "token_source": TOKEN_ENV}
    if path is not None:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            msg = f"cannot read the Consul token file {str(path)!r}: {exc.strerror}"
            raise reader.error("token_file", msg) from exc
        if not token:
            raise reader.error("token_file", f"the Consul token file {str(path)!r} is empty")
        return {"token": token, "token_source": "token_file"}
    if env.get(CONSUL_TOKEN_ENV, "").strip():
        return {"token": env[CONSUL_TOKEN_ENV].strip(), "token_source": CONSUL_TOKEN_ENV}
    return {}


def _naming(reader: _Reader) -> dict[str, Any]:
    tags = reader.get("tags", list, "a list of tags")
    for i, tag in enumerate(tags or ()):
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise reader.error(
                f"tags[{i}]", f"expected a tag of letters, digits, '._:=-', got {tag!r}"
            )
    return {
        "datacenter": reader.text("datacenter", _DC, "a datacenter name"),
        "service_prefix": reader.text(
            "service_prefix", _NAME_PREFIX, "letters, digits, '_' or '-' (or empty)"
        ),
        "tag": reader.text("tag", _TAG, "a tag of letters, digits, '._:=-'"),
        "tags": None if tags is None else tuple(tags),
        "discover": reader.get("discover", bool, "true or false"),
        "kv_prefix": reader.text(
            "kv_prefix",
            _KV_PREFIX,
            "a key prefix like 'affinity/' (segments of letters, digits, '._-', "
            "not starting with '.', ending with '/')",
        ),
        "stale_reads": reader.get("stale_reads", bool, "true or false"),
    }


def _timing(reader: _Reader) -> dict[str, Any]:
    return {
        "wait": reader.seconds("wait", 0.1, 300.0),
        "timeout": reader.seconds("timeout", 0.1, 120.0),
        "watch_rate": reader.seconds("watch_rate", 0.01, 1000.0),
        "watch_burst": reader.integer("watch_burst", 1, 1000),
        "backoff_cap": reader.seconds("backoff_cap", 0.1, 300.0),
    }


def _check(reader: _Reader) -> dict[str, Any]:
    return {
        "check_interval": reader.seconds("check_interval", 0.01, 3600.0),
        "check_timeout": reader.seconds("check_timeout", 0.01, 600.0),
        "deregister_critical_service_after": reader.seconds(
            "deregister_critical_service_after", 0.0, 30 * 86400.0
        ),
        "check_host": reader.text("check_host", _HOST, "a host name or IP address"),
        "tls_server_name": reader.text("tls_server_name", _HOST, "a host name"),
        "tls_skip_verify": reader.get("tls_skip_verify", bool, "true or false"),
    }


def go_duration(seconds: float) -> str:
    """A Go duration string Consul accepts (``"1500ms"``); a bare number would be nanoseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)")
_UNIT: Mapping[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_go_duration(text: str) -> float | None:
    """Seconds in a duration this module wrote (``"1500ms"``, ``"30s"``); None otherwise."""
    match = _GO_DURATION.fullmatch(text)
    return float(match.group(1)) * _UNIT[match.group(2)] if match else None
