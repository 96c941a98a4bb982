"""Configuration: one TOML file, every key overridable by an ``AFFINITY_*`` variable.

The file has fixed sections (``[referral]``, ``[server]``, ``[tokens]``,
``[registry]``, ``[health]``), one table per service under ``[services.<name>]``
and one per plugin under ``[plugins.<name>]``. A key ``section.key`` is
overridden by the environment variable ``AFFINITY_SECTION_KEY`` (for example
``AFFINITY_SERVER_ID=s2``), parsed as the key's type. Everything is converted
and validated at start-up by :mod:`affinity.convert`; an error names the key
and the file (or the variable). Plugin tables are kept as the file holds them
until the plugins that declare them are loaded (``Config.plugin_options``).
Relative paths are resolved against the directory of the file. Secrets (token
keys, the admin token) come from files or the environment, never from the
command line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from affinity.convert import convert, env_name
from affinity.errors import ConfigError

TABLE_ENV_PREFIXES = ("AFFINITY_PLUGINS_", "AFFINITY_REGISTRY_OPTIONS_")
"""Variables that override keys of tables read after loading (plugin and backend options)."""

T = TypeVar("T")
MIN_SECRET_LENGTH = 32
"""The fewest characters a bearer secret (admin token, forwarded secret) may have."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    """A host and port to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def from_text(cls, text: str) -> Listen:
        """``host:port`` or ``[v6]:port``; ValueError saying what is expected otherwise."""
        host, sep, port = text.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected 'host:port', for example '127.0.0.1:8400' or '[::1]:8400'")
        return cls(host=host, port=int(port))


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
    registration_secret_file: Path | None = None
    state_file: Path | None = None
    proxies_count: int = 0
    real_ip_header: str = ""
    forwarded_secret_file: Path | None = None
    retry_after: float = 2.0
    max_body_size: int = 64 * 1024
    request_timeout: float = 10.0
    handshake_timeout: float = 10.0
    keep_alive_timeout: float = 5.0

    def __post_init__(self) -> None:
        _check_connection_limits(self)


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
    capacity_inflight: int = 0
    capacity_bytes_per_s: float = 0.0
    require_token: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    referral_url: str = ""
    insecure_referral: bool = False
    referral_ca: Path | None = None
    admin_token_file: Path | None = None
    registration_token_file: Path | None = None
    active_window: float = 300.0
    active_max: int = 100_000
    load_half_life: float = 20.0
    drain_grace: float = 5.0
    drain_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    proxies_count: int = 0
    real_ip_header: str = ""
    forwarded_secret_file: Path | None = None
    max_body_size: int = 1024 * 1024
    request_timeout: float = 10.0
    handshake_timeout: float = 10.0
    keep_alive_timeout: float = 15.0

    def __post_init__(self) -> None:
        _check_connection_limits(self)
        if not self.load_half_life > 0:
            msg = f"load_half_life must be more than 0 seconds, got {self.load_half_life!r}"
            raise ValueError(msg)
        if not self.active_window > 0:
            raise ValueError(
                f"active_window must be more than 0 seconds, got {self.active_window!r}"
            )
        for key in ("capacity", "capacity_inflight", "capacity_bytes_per_s"):
            if getattr(self, key) < 0:
                raise ValueError(
                    f"{key} must be 0 (not stated) or more, got {getattr(self, key)!r}"
                )
        if self.active_max < 1:
            raise ValueError(f"active_max must be at least 1, got {self.active_max!r}")


def _check_connection_limits(settings: ReferralSettings | ServerSettings) -> None:
    """Refuse limits that would refuse every request or hold connections without end."""
    for key in ("request_timeout", "handshake_timeout", "keep_alive_timeout"):
        if not getattr(settings, key) > 0:
            raise ValueError(f"{key} must be more than 0 seconds, got {getattr(settings, key)!r}")
    if settings.max_body_size < 1024:
        # Sanic also caps the request head at this size: less would refuse plain requests.
        msg = f"max_body_size must be at least 1024 bytes, got {settings.max_body_size!r}"
        raise ValueError(msg)


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
    jwks_refresh_interval: float = 300.0
    jwks_min_refresh_interval: float = 30.0

    def __post_init__(self) -> None:
        """Refuse lifetimes the token issuer and verifier cannot work with, and a JWKS pacing
        that would let tokens of made-up keys send the referral a fetch per request."""
        if not self.ttl > 0:
            raise ValueError(f"ttl must be more than 0 seconds, got {self.ttl!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be from 0 to less than 1, got {self.jitter!r}")
        least = self.jwks_min_refresh_interval
        if not least >= 1:
            raise ValueError(f"jwks_min_refresh_interval must be at least 1 second, got {least!r}")
        if not self.jwks_refresh_interval >= least:
            raise ValueError(
                "jwks_refresh_interval must be at least jwks_min_refresh_interval "
                f"({least!r}), got {self.jwks_refresh_interval!r}"
            )

    @property
    def max_lifetime(self) -> float:
        """The longest ``exp - iat`` a verifier accepts: the longest life the issuer draws
        (``ttl * (1 + jitter)``, rounded up) plus the leeway."""
        return math.ceil(self.ttl * (1 + self.jitter)) + self.leeway


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrySettings:
    """``[registry]``: where servers are listed."""

    backend: str = "embedded"
    options: Mapping[str, Any] = field(default_factory=dict)
    allow_http: bool = False
    allow_hosts: tuple[str, ...] = ()


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
    from_env: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    """The dotted keys of the core sections and services whose value came from the environment."""
    from_flags: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """The dotted keys set by a command-line flag, with the flag (``{"server.id": "--id"}``)."""

    def source_of(self, key: str) -> str:
        """Where the value of ``key`` came from, for an error message: the file, the
        environment variable that overrode it, or the flag that overrode both."""
        if key in self.from_flags:
            return f"the flag {self.from_flags[key]}"
        if key in self.from_env:
            return f"environment variable {env_name(key)}"
        return self.source

    def with_flags(self, section: str, flags: Mapping[str, tuple[str, str]]) -> Config:
        """This configuration with keys of ``section`` set by command-line flags.

        ``flags`` maps a key to its flag and the text given (``{"id": ("--id", "s2")}``).
        A flag wins over the environment and the file. Its text is converted and
        checked as the file's value is, and an error names the flag.
        """
        cls = SECTIONS[section]
        changes = {}
        for key, (flag, text) in flags.items():
            alone = convert(cls, {key: text}, prefix=section, source=f"the flag {flag}", env={})
            changes[key] = getattr(alone, key)
        if not changes:
            return self
        marks = {f"{section}.{key}": flag for key, (flag, _) in flags.items()}
        return dataclasses.replace(
            self,
            **{section: dataclasses.replace(getattr(self, section), **changes)},
            from_flags={**self.from_flags, **marks},
        )

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
        """A bearer secret from the environment variable ``env``, else from the file at ``path``.

        None when neither is set. A secret that is set but empty, or shorter
        than :data:`MIN_SECRET_LENGTH` characters once stripped, is a
        :class:`ConfigError` naming the variable or ``key`` and the file: a
        short secret can be guessed, and an empty one would match an empty
        ``Authorization: Bearer`` header.
        """
        value = os.environ.get(env)
        if value is not None:
            return self._long_enough(value.strip(), f"the environment variable {env}", key)
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"cannot read secret file {str(path)!r}: {exc.strerror}"
            raise ConfigError(msg, key=key, source=self.source) from exc
        return self._long_enough(text.strip(), f"the file {str(path)!r}", key)

    def _long_enough(self, secret: str, where: str, key: str) -> str:
        if len(secret) < MIN_SECRET_LENGTH:
            held = "is empty" if not secret else f"holds only {len(secret)} characters"
            msg = (
                f"the secret in {where} {held}; at least {MIN_SECRET_LENGTH} are needed "
                "(make one with 'affinity keys admin-token --file FILE')"
            )
            raise ConfigError(msg, key=key, source=self.source)
        return secret


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
    sections = {
        name: convert(
            cls, _table(raw, name, source), prefix=name, source=source, base=base, env=env
        )
        for name, cls in SECTIONS.items()
    }
    services = {
        name: convert(
            ServiceSettings, table, prefix=f"services.{name}", source=source, base=base, env=env
        )
        for name, table in _table(raw, "services", source).items()
    }
    for name, table in _table(raw, "plugins", source).items():
        if not isinstance(table, dict):
            raise ConfigError("expected a table", key=f"plugins.{name}", source=source)
    tables: dict[str, type] = {name: cls for name, cls in SECTIONS.items()}
    tables.update({f"services.{name}": ServiceSettings for name in services})
    from_env = frozenset(
        f"{prefix}.{f.name}"
        for prefix, cls in tables.items()
        for f in dataclasses.fields(cls)
        if env_name(f"{prefix}.{f.name}") in env
    )
    config = Config(
        source=source,
        base=base,
        env={k: v for k, v in env.items() if k.startswith(TABLE_ENV_PREFIXES)},
        from_env=from_env,
        services=services,
        plugins=raw.get("plugins", {}),
        **sections,
    )
    _check_referral_urls(config)
    return config


def _check_referral_urls(config: Config) -> None:
    """An app server sends its registration token to ``referral_url`` and trusts the keys at
    ``jwks_url``: plain http:// only when ``server.insecure_referral`` says so."""
    server = config.server
    urls = [("server.referral_url", u.strip()) for u in server.referral_url.split(",")]
    urls.append(("tokens.jwks_url", config.tokens.jwks_url.strip()))
    for key, url in urls:
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if url and scheme != "https" and not (scheme == "http" and server.insecure_referral):
            msg = (
                f"expected an https:// URL, got {url!r}; plain http:// sends secrets and keys "
                "in clear (set server.insecure_referral = true to allow it)"
            )
            raise ConfigError(msg, key=key, source=config.source_of(key))


def _table(raw: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"expected a table, got {value!r}", key=key, source=source)
    return value
