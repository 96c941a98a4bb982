"""Test helpers for affinity and for plugin authors: real processes, real sockets, real TLS.

``Deployment`` makes a directory with a dev CA and certificate (the
project's own cert tool), a key ring, the referral's admin token and
registration secret, the app servers' own admin token and a config file, then
starts a referral and app servers (each with its registration token) as child
processes on loopback ports and stops every one of them at the end::

    with Deployment(tmp_path) as d:
        d.start_referral()
        d.start_server("s1")
        r = d.client().get(d.referral_url + "/v1/assign")
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from affinity.config import Config, load
from affinity.files import write_private
from affinity.plugin.manager import PluginManager
from affinity.process import ChildProcess, stop, wait_answering
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import generate_keyfile, load_keyring
from affinity.web.auth import registration_token
from affinity.web.certs import make_dev_certs
from affinity.web.tls import client_context

HELLO_APP = "affinity.demo:Hello"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def plugin_manager(*plugins: object) -> PluginManager:
    """A plugin manager holding only ``plugins``: no entry points, no environment."""
    return PluginManager(autoload=False, env={}, plugins=plugins)


def config_from_text(directory: Path, text: str, env: Mapping[str, str] | None = None) -> Config:
    """Load ``text`` as ``directory/affinity.toml``, so errors name that file."""
    path = directory / "affinity.toml"
    path.write_text(text)
    return load(path, env=env or {})


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout}s")
        time.sleep(interval)


def _health_section(health: str) -> str:
    """The ``[health]`` lines: the test defaults, less the keys ``health`` sets itself.

    TOML refuses a key given twice, so ``health="interval = 0.2"`` replaces the
    default instead of clashing with it.
    """
    given = tomllib.loads(health)
    defaults = {"ca_file": '"certs/ca.pem"', "interval": "0.5", "timeout": "0.5"}
    kept = "".join(f"{key} = {value}\n" for key, value in defaults.items() if key not in given)
    return kept + health


class Deployment:
    """A referral and app servers on loopback with TLS, for tests."""

    def __init__(
        self,
        directory: Path,
        *,
        services: str = '[services.web]\npolicy = "round_robin"\n',
        health: str = "",
        referral: str = "",
        server: str = "",
        extra_config: str = "",
        env: Mapping[str, str] | None = None,
        registry: str = "",
    ) -> None:
        """``registry`` holds the lines of a ``[registry]`` table (for example
        ``'backend = "consul"\n[registry.options]\naddress = "127.0.0.1:8500"'``);
        empty keeps the embedded registry."""
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.certs = make_dev_certs(directory / "certs", "affinity.test")
        self.ca = self.certs.ca
        generate_keyfile(directory / "keys.json", "HS256", False)
        self.admin_token = secrets.token_urlsafe(24)
        write_private(directory / "admin-token", self.admin_token.encode())
        self.registration_secret = secrets.token_urlsafe(32)
        write_private(directory / "registration-secret", self.registration_secret.encode())
        self.server_admin_token = secrets.token_urlsafe(24)
        """The app servers' admin token (their drain and resume), not the referral's."""
        write_private(directory / "server-admin-token", self.server_admin_token.encode())
        self.referral_port = free_port()
        self.referral_url = f"https://127.0.0.1:{self.referral_port}"
        self.config = directory / "affinity.toml"
        self.config.write_text(
            self._config_text(
                services, extra_config, health=health, referral=referral, server=server
            )
            + (f"\n[registry]\n{registry}\n" if registry else "")
        )
        self.env = {**os.environ, **(env or {})}
        for name in ("ADMIN_TOKEN", "TOKEN_KEYS", "REGISTRATION_SECRET", "REGISTRATION_TOKEN"):
            self.env.pop(f"AFFINITY_{name}", None)
        self.referrals: list[ChildProcess] = []
        self.referral_urls: list[str] = []
        self.servers: dict[str, ChildProcess] = {}
        self.server_urls: dict[str, str] = {}

    def _config_text(
        self, services: str, extra: str, *, health: str, referral: str, server: str
    ) -> str:
        return f"""
[referral]
listen = "127.0.0.1:{self.referral_port}"
tls_cert = "certs/cert.pem"
tls_key = "certs/key.pem"
admin_token_file = "admin-token"
registration_secret_file = "registration-secret"
state_file = "state.json"
{referral}

[tokens]
keys_file = "keys.json"

[health]
{_health_section(health)}

[server]
service = "web"
tls_cert = "certs/cert.pem"
tls_key = "certs/key.pem"
referral_url = "{self.referral_url}"
referral_ca = "certs/ca.pem"
admin_token_file = "server-admin-token"
drain_grace = 0.5
drain_timeout = 5.0
heartbeat_interval = 0.5
{server}

{services}
{extra}
"""

    # -- processes --------------------------------------------------------------------

    def start_referral(
        self,
        *,
        wait: bool = True,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        app: str | None = None,
        args: Sequence[str] = (),
    ) -> ChildProcess:
        """Start a referral; with ``port``, another instance on that port (its URL is
        appended to ``referral_urls``), as several replicas behind DNS round robin;
        with ``app``, a ``ReferralServer`` subclass (``module:Class`` or ``file.py:Class``);
        ``args`` go on its command line (``--log-level``, ``--access-log``, ...)."""
        url = self.referral_url
        listen: dict[str, str] = {}
        if port is not None:
            url = f"https://127.0.0.1:{port}"
            listen = {"AFFINITY_REFERRAL_LISTEN": f"127.0.0.1:{port}"}
        proc = ChildProcess(
            "referral",
            [
                "referral",
                "--config",
                str(self.config),
                *(["--class", app] if app else []),
                *args,
            ],
            env={**self.env, **listen, **(env or {})},
            log=self.dir / f"referral-{len(self.referrals)}.log",
        )
        self.referrals.append(proc)
        self.referral_urls.append(url)
        if wait:
            self.wait_http(f"{url}/healthz", proc)
        return proc

    def start_server(
        self,
        server_id: str,
        *,
        app: str = HELLO_APP,
        wait: bool = True,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
    ) -> ChildProcess:
        """Start app server ``server_id`` (``app``, the demo by default) on ``port`` or a free
        one; ``args`` go on its command line."""
        port = port or free_port()
        url = f"https://127.0.0.1:{port}"
        server_env = {
            **self.env,
            "AFFINITY_SERVER_ID": server_id,
            "AFFINITY_SERVER_LISTEN": f"127.0.0.1:{port}",
            "AFFINITY_SERVER_URL": url,
            "AFFINITY_REGISTRATION_TOKEN": self.registration_token(server_id),
            **(env or {}),
        }
        proc = ChildProcess(
            server_id,
            ["serve", app, "--config", str(self.config), *args],
            env=server_env,
            log=self.dir / f"{server_id}-{port}.log",
        )
        self.servers[server_id] = proc
        self.server_urls[server_id] = url
        if wait:
            self.wait_http(f"{url}/.well-known/affinity/health", proc)
        return proc

    def registration_token(self, server_id: str) -> str:
        """The token with which server ``server_id`` registers (and may change itself only)."""
        return registration_token(self.registration_secret, server_id)

    def wait_http(self, url: str, proc: ChildProcess, timeout: float = 20.0) -> None:
        """Until ``url`` (served by ``proc``) answers; :class:`ChildFailed` if ``proc`` exits."""
        wait_answering(url, proc, verify=client_context(self.ca), timeout=timeout)

    # -- clients ------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client that trusts the deployment's CA."""
        kwargs.setdefault("timeout", 5.0)
        return httpx.Client(verify=client_context(self.ca), **kwargs)

    def admin(self, referral_url: str | None = None) -> httpx.Client:
        """A client for a referral's admin API (the first one unless ``referral_url``)."""
        return self.client(
            base_url=referral_url or self.referral_url,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )

    def token(self, server_id: str, service: str = "web", *, age: float = 0.0) -> str:
        """A token signed with the deployment's keys, as the referral would issue it;
        with ``age`` seconds past, so that ``age`` beyond the lifetime makes it expired."""
        ring = load_keyring(load(str(self.config)))
        issuer = TokenIssuer(ring, ttl=60.0, jitter=0.0, clock=lambda: time.time() - age)
        token, _ = issuer.issue(server_id, issuer.new_client_id(), service)
        return token

    def registered(self, referral_url: str | None = None) -> set[str]:
        with self.admin(referral_url) as c:
            return {s["id"] for s in c.get("/v1/servers").json()["servers"]}

    def assignable(self, referral_url: str | None = None) -> set[str]:
        with self.admin(referral_url) as c:
            return {s["id"] for s in c.get("/v1/servers").json()["servers"] if s["assignable"]}

    # -- teardown ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Kill every process at once (a test of a graceful stop signals its process itself)."""
        stop([*self.servers.values(), *self.referrals], grace=0)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
