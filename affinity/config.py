"""Configuration: one TOML file, every key overridable by an ``AFFINITY_*`` variable.

The file has fixed sections (``[referral]``, ``[server]``, ``[tokens]``,
``[registry]``, ``[health]``), one table per service under ``[services.<name>]``
and one per plugin under ``[plugins.<name>]``. A key ``section.key`` is
overridden by the environment variable ``AFFINITY_SECTION_KEY`` (for example
``AFFINITY_SERVER_ID=s2``), parsed as the key's type. Everything is validated at
start-up; an error names the key and the file. Relative paths are resolved
against the directory of the file. Secrets (token keys, the admin token) come
from files or the environment, never from the command line.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affinity.errors import ConfigError

ENV_PREFIX = "AFFINITY_"


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    """A host and port to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticServer:
    """A server listed in the config file (the embedded registry's seed)."""

    id: str
    url: str
    weight: int = 1
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    """``[services.<name>]``: a pool of servers and how to assign them."""

    policy: str = "load_weighted"
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    servers: tuple[StaticServer, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferralSettings:
    """``[referral]``: the referral service."""

    listen: Listen = Listen(host="127.0.0.1", port=8400)
    workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    default_service: str = "web"
    redirect_prefix: str = "/go"
    cookie_domain: str = ""
    admin_token_file: Path | None = None
    state_file: Path | None = None
    proxies_count: int = 0
    real_ip_header: str = ""
    forwarded_secret_file: Path | None = None
    retry_after: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """``[server]``: one app-server process."""

    id: str = ""
    service: str = "web"
    listen: Listen = Listen(host="127.0.0.1", port=8443)
    url: str = ""
    weight: int = 1
    meta: Mapping[str, str] = field(default_factory=dict)
    capacity: int = 0
    require_token: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    referral_url: str = ""
    referral_ca: Path | None = None
    admin_token_file: Path | None = None
    active_window: float = 300.0
    active_max: int = 100_000
    drain_grace: float = 5.0
    drain_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    proxies_count: int = 0
    real_ip_header: str = ""
    forwarded_secret_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSettings:
    """``[tokens]``: signing and verifying affinity tokens."""

    keys_file: Path | None = None
    jwks_url: str = ""
    issuer: str = "affinity"
    ttl: float = 3600.0
    jitter: float = 0.1
    leeway: float = 30.0
    cache_size: int = 10_000

    def __post_init__(self) -> None:
        """Refuse lifetimes the token issuer and verifier cannot work with."""
        if not self.ttl > 0:
            raise ValueError(f"ttl must be more than 0 seconds, got {self.ttl!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be from 0 to less than 1, got {self.jitter!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrySettings:
    """``[registry]``: where servers are listed."""

    backend: str = "embedded"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSettings:
    """``[health]``: how the referral learns that servers are up."""

    sources: tuple[str, ...] = ("active",)
    interval: float = 1.0
    fast_interval: float = 0.25
    timeout: float = 0.5
    rise: int = 2
    fall: int = 2
    jitter: float = 0.1
    recheck_interval: float = 0.5
    slow_start: float = 0.0
    max_passive_share: float = 0.5
    panic_threshold: float = 0.5
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        """Refuse values that would stop checks or make rise/fall meaningless."""
        for key in ("interval", "fast_interval", "timeout"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be more than 0 seconds, got {getattr(self, key)!r}")
        for key in ("rise", "fall"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)!r}")
        if not 0 <= self.jitter <= 0.5:
            raise ValueError(f"jitter must be from 0 to 0.5, got {self.jitter!r}")
        for key in ("max_passive_share", "panic_threshold"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must be from 0 to 1, got {getattr(self, key)!r}")


SECTIONS: Mapping[str, type[Any]] = {
    "referral": ReferralSettings,
    "server": ServerSettings,
    "tokens": TokenSettings,
    "registry": RegistrySettings,
    "health": HealthSettings,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole, validated configuration of one process."""

    source: str = "<defaults>"
    referral: ReferralSettings = ReferralSettings()
    server: ServerSettings = ServerSettings()
    tokens: TokenSettings = TokenSettings()
    registry: RegistrySettings = RegistrySettings()
    health: HealthSettings = HealthSettings()
    services: Mapping[str, ServiceSettings] = field(default_factory=dict)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def plugin_options(self, name: str) -> Mapping[str, Any]:
        """The ``[plugins.<name>]`` table, empty when absent."""
        return self.plugins.get(name, {})

    def service(self, name: str) -> ServiceSettings:
        """The settings of a service; services not in the file get the defaults."""
        return self.services.get(name, ServiceSettings())

    def read_secret(self, path: Path | None, env: str, key: str) -> str | None:
        """A secret from the environment variable ``env``, else from the file at ``path``."""
        value = os.environ.get(env)
        if value:
            return value.strip()
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            msg = f"cannot read secret file {str(path)!r}: {exc.strerror}"
            raise ConfigError(msg, key=key, source=self.source) from exc


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config file (or only the defaults and environment when None)."""
    env = os.environ if env is None else env
    if path is None:
        return _build({}, "<defaults>", Path.cwd(), env)
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("file not found", source=str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from exc
    return _build(raw, str(path), path.resolve().parent, env)


def _build(raw: dict[str, Any], source: str, base: Path, env: Mapping[str, str]) -> Config:
    known = {*SECTIONS, "services", "plugins"}
    for key in raw:
        if key not in known:
            msg = f"unknown section; expected one of {sorted(known)}"
            raise ConfigError(msg, key=key, source=source)
    ctx = _Ctx(source=source, base=base)
    sections = {
        name: _section(cls, _table(raw, name, ctx), name, ctx, env)
        for name, cls in SECTIONS.items()
    }
    services = {
        name: _section(ServiceSettings, table, f"services.{name}", ctx, {})
        for name, table in _table(raw, "services", ctx).items()
    }
    for name, table in _table(raw, "plugins", ctx).items():
        if not isinstance(table, dict):
            raise ConfigError("expected a table", key=f"plugins.{name}", source=source)
    return Config(source=source, services=services, plugins=raw.get("plugins", {}), **sections)


@dataclass(frozen=True, slots=True)
class _Ctx:
    source: str
    base: Path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, source=self.source)


def _table(raw: Mapping[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ctx.error(key, f"expected a table, got {value!r}")
    return value


def _section(
    cls: type[Any], table: Mapping[str, Any], prefix: str, ctx: _Ctx, env: Mapping[str, str]
) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            raise ctx.error(f"{prefix}.{key}", f"unknown key; expected one of {sorted(names)}")
    values: dict[str, Any] = {}
    for name in names:
        key = f"{prefix}.{name}"
        env_name = ENV_PREFIX + key.replace(".", "_").upper()
        if env_name in env:
            values[name] = _convert(hints[name], _parse_env(env[env_name]), key, ctx)
        elif name in table:
            values[name] = _convert(hints[name], table[name], key, ctx)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ctx.error(prefix, str(exc)) from exc


def _parse_env(text: str) -> Any:
    """Environment values are TOML values when they parse as one, else plain strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _convert(hint: Any, value: Any, key: str, ctx: _Ctx) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
        return None if value in ("", None) else _convert(inner, value, key, ctx)
    if hint is bool:
        if not isinstance(value, bool):
            raise ctx.error(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ctx.error(key, f"expected a non-negative integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ctx.error(key, f"expected a non-negative number of seconds, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ctx.error(key, f"expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ctx.error(key, f"expected a file path, got {value!r}")
        return ctx.base / Path(value).expanduser()
    if hint is Listen:
        return _listen(value, key, ctx)
    if origin is tuple:
        return _convert_tuple(typing.get_args(hint)[0], value, key, ctx)
    if origin is Mapping:
        return _convert_mapping(typing.get_args(hint)[1], value, key, ctx)
    raise AssertionError(f"unsupported config type {hint!r}")  # pragma: no cover


def _convert_tuple(item: Any, value: Any, key: str, ctx: _Ctx) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ctx.error(key, f"expected a list, got {value!r}")
    if item is StaticServer:
        return tuple(_static_server(v, f"{key}[{i}]", ctx) for i, v in enumerate(value))
    return tuple(_convert(item, v, f"{key}[{i}]", ctx) for i, v in enumerate(value))


def _convert_mapping(item: Any, value: Any, key: str, ctx: _Ctx) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ctx.error(key, f"expected a table, got {value!r}")
    if item is Any:
        return dict(value)
    return {str(k): _convert(item, v, f"{key}.{k}", ctx) for k, v in value.items()}


def _static_server(value: Any, key: str, ctx: _Ctx) -> StaticServer:
    if not isinstance(value, dict):
        raise ctx.error(key, f"expected a table with id and url, got {value!r}")
    for required in ("id", "url"):
        if required not in value:
            raise ctx.error(f"{key}.{required}", "missing")
    server = _section(StaticServer, value, key, ctx, {})
    assert isinstance(server, StaticServer)
    return server


def _listen(value: Any, key: str, ctx: _Ctx) -> Listen:
    expected = "expected 'host:port', for example '127.0.0.1:8400' or '[::1]:8400'"
    if not isinstance(value, str):
        raise ctx.error(key, f"{expected}, got {value!r}")
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ctx.error(key, f"{expected}, got {value!r}")
    return Listen(host=host, port=int(port))
