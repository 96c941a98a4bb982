"""App servers register with the referral's admin API (the embedded registry's registrar).

On start the server PUTs its registration; every heartbeat it asks whether
the referral still knows it and registers again if not (a referral restarted
without a state file); on shutdown it deregisters. With several referral
instances it registers with each of them.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from affinity.config import Config
from affinity.errors import ConfigError, RegistrationFailed, RegistryUnavailable
from affinity.models import Server, SharedSettings
from affinity.plugin import hookimpl
from affinity.plugin.registry import Registrar
from affinity.web.auth import REGISTRATION_TOKEN_ENV
from affinity.web.tls import client_context

log = logging.getLogger("affinity.server")


class AdminApiRegistrar(Registrar):
    """Registers an app server with one or more referrals through their admin API."""

    name = "embedded"

    def __init__(
        self,
        referrals: Sequence[str],
        token: str,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 5.0,
    ) -> None:
        self._referrals = [r.rstrip("/") for r in referrals]
        self._client = httpx.AsyncClient(
            verify=verify,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )

    async def _call(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        try:
            return await self._client.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            msg = f"referral at {url.split('/v1/')[0]} is unreachable: {exc!r}"
            raise RegistryUnavailable(msg) from exc

    async def register(self, server: Server) -> None:
        body = {
            "service": server.service,
            "url": server.url,
            "weight": server.weight,
            "meta": dict(server.meta),
        }
        for base in self._referrals:
            response = await self._call("PUT", f"{base}/v1/servers/{server.id}", json=body)
            if response.status_code != 200:
                msg = (
                    f"referral {base} refused registration: {response.status_code} {response.text}"
                )
                raise RegistrationFailed(msg)

    async def heartbeat(self, server: Server) -> None:
        for base in self._referrals:
            response = await self._call("GET", f"{base}/v1/servers/{server.id}")
            if response.status_code == 404:
                log.warning("referral %s forgot server %s; registering again", base, server.id)
                await self.register(server)
            elif response.status_code != 200:
                msg = f"referral {base} answered {response.status_code} to a heartbeat"
                raise RegistrationFailed(msg)

    async def deregister(self, server: Server) -> None:
        for base in self._referrals:
            response = await self._call("DELETE", f"{base}/v1/servers/{server.id}")
            if response.status_code not in (200, 404):
                msg = f"referral {base} refused deregistration: {response.status_code}"
                raise RegistrationFailed(msg)

    async def set_maintenance(self, server: Server, enabled: bool, reason: str = "") -> None:
        action = "drain" if enabled else "resume"
        for base in self._referrals:
            await self._call("POST", f"{base}/v1/servers/{server.id}/{action}")

    async def watch_settings(
        self, index: int, wait: float
    ) -> tuple[int, Mapping[str, SharedSettings]]:
        """Long-poll the first referral that answers for its shared settings."""
        errors = []
        for base in self._referrals:
            try:
                response = await self._client.get(
                    f"{base}/v1/settings",
                    params={"index": index, "wait": wait},
                    timeout=wait + 5.0,
                )
            except httpx.HTTPError as exc:
                errors.append(f"{base}: {exc!r}")
                continue
            if response.status_code == 200:
                return _parse_settings(response.json())
            errors.append(f"{base}: HTTP {response.status_code}")
        raise RegistryUnavailable("no referral answered for settings: " + "; ".join(errors))

    async def aclose(self) -> None:
        await self._client.aclose()


def _parse_settings(body: Any) -> tuple[int, Mapping[str, SharedSettings]]:
    try:
        documents = {
            name: SharedSettings(
                name=name,
                version=int(doc["version"]),
                value=doc["value"],
                epoch=int(doc.get("epoch", 0)),
            )
            for name, doc in body["settings"].items()
        }
        return int(body["index"]), documents
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RegistrationFailed(
            f"the referral answered settings of an unknown shape: {exc}"
        ) from exc


@hookimpl(trylast=True)
def affinity_make_registrar(config: Config) -> Registrar | None:
    """Provide the admin-API registrar for ``registry.backend = "embedded"``."""
    if config.registry.backend != "embedded":
        return None
    settings = config.server
    referrals = [u.strip() for u in settings.referral_url.split(",") if u.strip()]
    if not referrals:
        msg = "app servers register with the referral: set server.referral_url"
        raise ConfigError(msg, key="server.referral_url", source=config.source)
    return AdminApiRegistrar(
        referrals,
        _credential(config),
        verify=client_context(
            settings.referral_ca,
            key="server.referral_ca",
            source=config.source_of("server.referral_ca"),
        ),
    )


def _credential(config: Config) -> str:
    """The server's registration token; else, with a warning, the admin token (older set-ups)."""
    settings = config.server
    token = config.read_secret(
        settings.registration_token_file, REGISTRATION_TOKEN_ENV, "server.registration_token_file"
    )
    if token is not None:
        return token
    token = config.read_secret(
        settings.admin_token_file, "AFFINITY_ADMIN_TOKEN", "server.admin_token_file"
    )
    if token is None:
        msg = (
            "registering with the referral needs this server's registration token: set "
            "server.registration_token_file or AFFINITY_REGISTRATION_TOKEN (make one with "
            "'affinity keys registration-token')"
        )
        raise ConfigError(msg, key="server.registration_token_file", source=config.source)
    log.warning(
        "registering with the admin token (server.admin_token_file): it lets this server "
        "change every server; give it a registration token of its own instead "
        "(server.registration_token_file, 'affinity keys registration-token')"
    )
    return token
