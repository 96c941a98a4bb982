"""What a role needs before it serves, checked in one pass: ``affinity check`` and start-up.

``affinity referral`` and ``affinity serve`` run :func:`preflight` before they
build anything, and ``affinity check`` runs the very same function, so the two
cannot disagree. It builds every part the role builds at start-up (plugins and
their options, policies, the registry or the registrar, health sources, the
key ring or the JWKS check, TLS contexts, bearer secrets, this server's own
entry), connects to nothing, and collects every error instead of stopping at
the first. Binding the listening address is left to start-up
(:func:`affinity.web.serving.listen_socket`): a check may run beside the live
process.

Private files (TLS keys, key rings, bearer secrets, any ``*token*``,
``*secret*`` or ``*password*`` file of the registry or a plugin) that group or
others may read or write are warnings, not errors: container runtimes mount
secrets 0644 or 0444 inside a container of one user, and refusing them would
break those deployments. ``affinity check --strict`` makes them errors.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affinity.config import Config, ReferralSettings, ServerSettings
from affinity.convert import env_name
from affinity.errors import AffinityError
from affinity.plugin.manager import PluginManager
from affinity.server.base import _own_entry
from affinity.server.tokens import TokenCheck
from affinity.tokens.keyring import KEYS_ENV, load_keyring
from affinity.web.auth import (
    REGISTRATION_SECRET_ENV,
    REGISTRATION_TOKEN_ENV,
    BearerAuth,
    RegistrationAuth,
)
from affinity.web.serving import ssl_for

ROLES = ("referral", "server")
ADMIN_TOKEN_ENV = "AFFINITY_ADMIN_TOKEN"
FORWARDED_SECRET_ENV = "AFFINITY_FORWARDED_SECRET"
_SECRET_WORDS = re.compile(
    r"(?:^|[_\-.])(token|secret|password|passwd|credentials?|api[_\-]?key|private[_\-]?key)"
    r"(?:$|[_\-.])",
    re.I,
)


def is_secret_name(name: str) -> bool:
    """True for an option or variable whose value is a secret: a word of its name says
    token, secret, password, credentials, api key or private key (``token``,
    ``api_secret``, ``AFFINITY_ADMIN_TOKEN``), and it is not the path of a file."""
    return bool(_SECRET_WORDS.search(name)) and not re.search(r"[_\-.](file|path)$", name, re.I)


def is_secret_file_option(name: str) -> bool:
    """True for an option naming a file that holds a secret (``token_file``, ``secret_path``)."""
    stem = re.sub(r"[_\-.](file|path)$", "", name, flags=re.I)
    return stem != name and (
        is_secret_name(stem) or re.search(r"(^|[_\-.])keys?$", stem) is not None
    )


@dataclass
class Findings:
    """The errors and warnings of one preflight, in the order found, without repeats."""

    errors: list[AffinityError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What is allowed but worth knowing (the referral's admin API closed)."""

    def attempt(self, check: Callable[[], object]) -> bool:
        """Run ``check``; True when it passed, else its error is kept."""
        try:
            check()
        except AffinityError as exc:
            if str(exc) not in {str(e) for e in self.errors}:
                self.errors.append(exc)
            return False
        return True


class Refused(AffinityError):
    """Start-up refused: every error found, one per line."""

    def __init__(self, errors: Iterable[AffinityError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))


def configured_roles(config: Config) -> tuple[str, ...]:
    """The roles a configuration sets up: ``[server]`` for an app server; ``[referral]`` or
    ``[services.*]`` for the referral; the referral alone when it sets neither."""
    server = config.server != ServerSettings()
    referral = config.referral != ReferralSettings() or bool(config.services)
    if server and not referral:
        return ("server",)
    return ("referral", "server") if server else ("referral",)


def preflight(
    config: Config, roles: Iterable[str], manager: PluginManager | None = None
) -> Findings:
    """Build what ``roles`` build at start-up, connecting to nothing; every error found."""
    found = Findings()
    made: list[Any] = []
    plugins: PluginManager | None = None

    def load_plugins() -> None:
        nonlocal plugins
        loaded = manager or PluginManager()
        loaded.configure(config)
        plugins = loaded  # only once configured: the parts they make may need it

    found.attempt(load_plugins)
    for role in roles:
        checks = _referral_checks if role == "referral" else _server_checks
        for check in checks(config, plugins, made):
            found.attempt(check)
        found.warnings.extend(w for w in _open_files(config, role) if w not in found.warnings)
    if plugins is None:
        found.notes.append(
            "the plugins could not be configured, so the parts they make (policies, the registry "
            "or registrar, health sources) were not checked; fix the errors above and check again"
        )
    if "referral" in roles and not _has_admin_token(config):
        found.notes.append(
            "no admin token (referral.admin_token_file or AFFINITY_ADMIN_TOKEN): the admin API "
            "and the dashboard answer 403 admin_closed; make one with "
            "'affinity keys admin-token --file FILE'"
        )
    if made:
        asyncio.run(_close(made))
    return found


def require(config: Config, role: str) -> list[str]:
    """Raise :class:`Refused` with every error of ``role``'s preflight; else its warnings."""
    found = preflight(config, (role,))
    if found.errors:
        raise Refused(found.errors)
    return found.warnings


async def _close(made: list[Any]) -> None:
    for part in made:
        await part.aclose()


def _referral_checks(
    config: Config, plugins: PluginManager | None, made: list[Any]
) -> Iterator[Callable[[], object]]:
    yield lambda: load_keyring(config)
    yield lambda: ssl_for(config.referral, "referral", config.source)
    yield lambda: BearerAuth.from_config(config, "referral")
    yield lambda: RegistrationAuth.from_config(config)
    yield lambda: _forwarded_secret(config, "referral")
    if plugins is None:  # the plugins failed to load: their parts cannot be built
        return
    for service in config.services:
        yield lambda service=service: plugins.make_policy(service, config)  # type: ignore[misc]
    yield lambda: plugins.make_registry(config)
    yield lambda: made.extend(plugins.make_health_sources(config))


def _server_checks(
    config: Config, plugins: PluginManager | None, made: list[Any]
) -> Iterator[Callable[[], object]]:
    yield lambda: _own_entry(config)
    yield lambda: TokenCheck(config)
    yield lambda: ssl_for(config.server, "server", config.source)
    yield lambda: BearerAuth.from_config(config, "server")
    yield lambda: _forwarded_secret(config, "server")
    if plugins is not None:
        yield lambda: made.append(plugins.make_registrar(config))


def _has_admin_token(config: Config) -> bool:
    return config.referral.admin_token_file is not None or bool(os.environ.get(ADMIN_TOKEN_ENV))


def _forwarded_secret(config: Config, section: str) -> object:
    settings = getattr(config, section)
    key = f"{section}.forwarded_secret_file"
    return config.read_secret(settings.forwarded_secret_file, FORWARDED_SECRET_ENV, key)


def _open_files(config: Config, role: str) -> Iterator[str]:
    """A warning for each private file of ``role`` that group or others may read or write."""
    for key, path in _private_files(config, role):
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # a missing file is an error of the check that reads it
        if mode & 0o077:
            yield (
                f"{config.source_of(key)}: {key}: {str(path)!r} is open to group or others "
                f"(mode {stat.S_IMODE(mode):04o}); make it private: chmod 600 {path}"
            )


def _private_files(config: Config, role: str) -> Iterator[tuple[str, Path]]:
    settings = getattr(config, role)
    env = config.env
    unless_env: list[tuple[str, Path | None, str]] = [
        (f"{role}.tls_key", settings.tls_key, ""),
        (f"{role}.admin_token_file", settings.admin_token_file, ADMIN_TOKEN_ENV),
        (f"{role}.forwarded_secret_file", settings.forwarded_secret_file, FORWARDED_SECRET_ENV),
    ]
    if role == "referral" or not config.tokens.jwks_url:  # else the server reads no key ring
        unless_env.append(("tokens.keys_file", config.tokens.keys_file, KEYS_ENV))
    if role == "referral":
        secret = config.referral.registration_secret_file
        unless_env.append(("referral.registration_secret_file", secret, REGISTRATION_SECRET_ENV))
    else:
        token = config.server.registration_token_file
        unless_env.append(("server.registration_token_file", token, REGISTRATION_TOKEN_ENV))
    for key, path, variable in unless_env:
        if path is not None and not (variable and os.environ.get(variable)):
            yield key, path
    tables = [("registry.options", config.registry.options)]
    tables += [(f"plugins.{name}", table) for name, table in config.plugins.items()]
    for prefix, table in tables:
        for option, value in table.items():
            key = f"{prefix}.{option}"
            value = env.get(env_name(key), value)
            if isinstance(value, str) and value and is_secret_file_option(option):
                yield key, config.base / value
