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
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from affinity.errors import ConfigError

ENV_PREFIX = "AFFINITY_"
TABLE_ENV_PREFIXES = ("AFFINITY_PLUGINS_", "AFFINITY_REGISTRY_OPTIONS_")
"""Variables that override keys of tables read after loading (plugin and backend options)."""

T = TypeVar("T")


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
    base: Path = field(default_factory=Path.cwd, repr=False, compare=False)
    """The directory relative paths are resolved against (the file's)."""
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """The variables of :data:`TABLE_ENV_PREFIXES` at load time; never shown (may hold secrets)."""

    def plugin_options(self, name: str, cls: type[T]) -> T:
        """The ``[plugins.<name>]`` table converted to ``cls``, a dataclass of declared options.

        Each key may be overridden by ``AFFINITY_PLUGINS_<NAME>_<KEY>``; a bad or
        unknown key raises :class:`ConfigError` naming it and the file (or variable).
        An absent table gives the defaults.
        """
        return self.read(cls, self.plugins.get(name, {}), f"plugins.{name}")

    def read(self, cls: type[T], table: Mapping[str, Any], key: str) -> T:
        """Convert a table of this configuration found at ``key`` to the dataclass ``cls``."""
        return convert(cls, table, prefix=key, source=self.source, base=self.base, env=self.env)

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
    return Config(
        source=source,
        base=base,
        env={k: v for k, v in env.items() if k.startswith(TABLE_ENV_PREFIXES)},
        services=services,
        plugins=raw.get("plugins", {}),
        **sections,
    )


# -- conversion: one converter for the core's sections and every plugin's options ----------


@dataclass(frozen=True, slots=True)
class Rule:
    """What a declared option allows beyond its type, and what it means (field metadata).

    Bounds and pattern apply to each item of a list or table; ``check`` is
    called with each converted value and raises ValueError to refuse it.
    """

    help: str = ""
    low: float | None = None
    high: float | None = None
    pattern: re.Pattern[str] | None = None
    expected: str = ""
    check: Callable[[Any], object] | None = None
    resolved: bool = False
    """True for a field the owner fills in after conversion (a secret, say): not an option."""

    def bounds(self) -> str:
        """The bounds in words (``from 1 to 32``, ``of at least 1``), empty when there are none."""
        low, high = _number_text(self.low), _number_text(self.high)
        if low and high:
            return f"from {low} to {high}"
        return f"of at least {low}" if low else f"of at most {high}" if high else ""


def _number_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else str(value)


RULE = "affinity"
"""The key of a :class:`Rule` in a dataclass field's metadata."""
_NO_RULE = Rule()


def convert(
    cls: type[T],
    table: Mapping[str, Any],
    *,
    prefix: str,
    source: str | None,
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """A dataclass instance from a table; a ConfigError names the key and the file or variable.

    Keys are named ``<prefix>.<key>``; each top-level key is overridden by the
    environment variable ``AFFINITY_<PREFIX>_<KEY>`` when ``env`` holds it.
    """
    ctx = _Ctx(source=source, base=Path.cwd() if base is None else base)
    value: T = _section(cls, table, prefix, ctx, env or {})
    return value


def option_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of a dataclass that a table may set (not the resolved ones)."""
    return [
        f for f in dataclasses.fields(cls) if f.init and not f.metadata.get(RULE, _NO_RULE).resolved
    ]


def env_name(key: str) -> str:
    """The variable that overrides a dotted key: ``plugins.ratelimit.rate`` ->
    ``AFFINITY_PLUGINS_RATELIMIT_RATE``."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


@dataclass(frozen=True, slots=True)
class _Ctx:
    source: str | None
    base: Path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key or None, source=self.source)


def _table(raw: Mapping[str, Any], key: str, ctx: _Ctx) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ctx.error(key, f"expected a table, got {value!r}")
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _section(cls: type[Any], table: Any, prefix: str, ctx: _Ctx, env: Mapping[str, str]) -> Any:
    if not isinstance(table, Mapping):
        raise ctx.error(prefix, f"expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in option_fields(cls)}
    for key in table:
        if key not in fields:
            expected = f"expected one of {sorted(fields)}" if fields else "this takes no options"
            raise ctx.error(_join(prefix, str(key)), f"unknown key; {expected}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        rule = f.metadata.get(RULE, _NO_RULE)
        variable = env_name(key) if env and prefix else ""
        if variable in env:
            from_env = dataclasses.replace(ctx, source=f"environment variable {variable}")
            values[name] = _convert(hints[name], _parse_env(env[variable]), key, from_env, rule)
        elif name in table:
            values[name] = _convert(hints[name], table[name], key, ctx, rule)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ctx.error(
                key, f"missing; expected {rule.expected}" if rule.expected else "missing"
            )
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ctx.error(prefix, str(exc)) from exc


def _parse_env(text: str) -> Any:
    """Environment values are TOML values when they parse as one, else plain strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _convert(hint: Any, value: Any, key: str, ctx: _Ctx, rule: Rule) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
        return None if value in ("", None) else _convert(inner, value, key, ctx, rule)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) or value not in choices:
            expected = ", ".join(repr(c) for c in choices)
            raise ctx.error(key, f"expected one of {expected}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ctx.error(key, f"expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, f"{key}[{i}]", ctx, rule) for i, v in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, dict):
            raise ctx.error(key, f"expected a table, got {value!r}")
        item = typing.get_args(hint)[1]
        if item is Any:
            return dict(value)
        return {str(k): _convert(item, v, f"{key}.{k}", ctx, rule) for k, v in value.items()}
    if hint is Listen:
        return _listen(value, key, ctx)
    if dataclasses.is_dataclass(hint):
        return _section(typing.cast(type[Any], hint), value, key, ctx, {})
    value = _scalar(hint, value, key, ctx, rule)
    if rule.check is not None:
        try:
            rule.check(value)
        except ValueError as exc:
            raise ctx.error(key, str(exc)) from None
    return value


def _scalar(hint: Any, value: Any, key: str, ctx: _Ctx, rule: Rule) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ctx.error(key, f"expected true or false, got {value!r}")
        return value
    if hint is int or hint is float:
        return _number(hint, value, key, ctx, rule)
    if hint is str:
        if not isinstance(value, str):
            raise ctx.error(key, f"expected {rule.expected or 'a string'}, got {value!r}")
        if rule.pattern is not None and not rule.pattern.fullmatch(value):
            expected = rule.expected or f"text matching {rule.pattern.pattern!r}"
            raise ctx.error(key, f"expected {expected}, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ctx.error(key, f"expected a file path, got {value!r}")
        return ctx.base / Path(value).expanduser()
    raise AssertionError(f"unsupported option type {hint!r}")  # pragma: no cover


def _number(hint: type[int] | type[float], value: Any, key: str, ctx: _Ctx, rule: Rule) -> Any:
    low = 0 if rule.low is None else rule.low
    high = math.inf if rule.high is None else rule.high
    kinds = (int,) if hint is int else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
    if not ok or not low <= value <= high:
        what = "integer" if hint is int else "number"
        bounds = rule.bounds()
        expected = f"a{'n' * (hint is int)} {what} {bounds}" if bounds else f"a non-negative {what}"
        raise ctx.error(key, f"expected {expected}, got {value!r}")
    return hint(value)


def _listen(value: Any, key: str, ctx: _Ctx) -> Listen:
    expected = "expected 'host:port', for example '127.0.0.1:8400' or '[::1]:8400'"
    if not isinstance(value, str):
        raise ctx.error(key, f"{expected}, got {value!r}")
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ctx.error(key, f"{expected}, got {value!r}")
    return Listen(host=host, port=int(port))
