"""Fixtures for the Consul tests: a stand-in agent per test, or a real agent when asked.

Why per test: each test gets a fresh agent (index back at 1, nothing registered), so tests
cannot leak state into each other and index assertions stay exact. Set
``AFFINITY_TEST_CONSUL=http://host:port`` to run the same tests against a real agent
(``consul agent -dev``); tests that need the stand-in — its hooks, ACL mode, shrunk
timers — then skip (every fixture that makes a stand-in calls ``skip_if_real_agent``).

Fixtures:

* ``consul_url`` — base URL of the agent under test.
* ``standin`` — the in-process ``AgentStandIn`` behind ``consul_url`` (skips on a real agent).
* ``make_standin(**config)`` — another stand-in with its own ``StandInConfig`` overrides.
* ``consul_http`` — an ``httpx.Client`` on ``consul_url``; ``make_http(url, **kwargs)`` for
  others; ``consul_client`` — a python-consul2 ``consul.Consul``;
  ``make_consul_client(url, token=None)`` for others.
* ``maybe_standin`` — the stand-in, or None on a real agent (for optional hooks).
* ``timing`` — check intervals and deadlines suited to the agent under test.
* ``health_target`` / ``make_health_target(tls=...)`` — a tiny HTTP server whose status an
  HTTP check follows.
"""

from __future__ import annotations

import http.server
import os
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import consul
import httpx
import pytest

from tests.consul_agent import AgentStandIn, StandInConfig

REAL_AGENT_ENV = "AFFINITY_TEST_CONSUL"

# python-consul2 0.1.5 lets these override its constructor arguments (consul/base.py).
CONSUL_CLIENT_ENV = (
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
)

# Timers shrunk so interval-driven behaviour shows within a fraction of a second.
FAST_CONFIG = StandInConfig(
    min_check_interval=0.05,
    deregister_min=0.6,
    reap_interval=0.1,
)


def real_agent_url() -> str | None:
    """The real agent named by AFFINITY_TEST_CONSUL, if any."""
    return os.environ.get(REAL_AGENT_ENV) or None


def skip_if_real_agent(why: str = "needs the stand-in's hooks or settings") -> None:
    """Skip the calling test or fixture when running against a real agent."""
    if real_agent_url():
        pytest.skip(f"{REAL_AGENT_ENV} is set: {why}")


@dataclass(frozen=True, slots=True)
class Timing:
    """A check interval for tests to register, and how long they may wait for its effect."""

    interval: str
    interval_s: float
    deadline: float


@pytest.fixture(autouse=True)
def _no_consul_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONSUL_CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_standin() -> Iterator[Callable[..., AgentStandIn]]:
    started: list[AgentStandIn] = []

    def make(**overrides: Any) -> AgentStandIn:
        skip_if_real_agent()
        agent = AgentStandIn(replace(FAST_CONFIG, **overrides))
        agent.start()
        started.append(agent)
        return agent

    yield make
    for agent in reversed(started):
        agent.stop()


@pytest.fixture
def standin(make_standin: Callable[..., AgentStandIn]) -> AgentStandIn:
    return make_standin()


@pytest.fixture
def consul_url(request: pytest.FixtureRequest) -> str:
    url = real_agent_url()
    if url:
        return url.rstrip("/")
    agent: AgentStandIn = request.getfixturevalue("standin")
    return agent.url


@pytest.fixture
def maybe_standin(request: pytest.FixtureRequest) -> AgentStandIn | None:
    """The stand-in behind `consul_url`, or None on a real agent (for optional hooks)."""
    if real_agent_url():
        return None
    agent: AgentStandIn = request.getfixturevalue("standin")
    return agent


@pytest.fixture(scope="session")
def client_tls() -> ssl.SSLContext:
    """One client TLS context: httpx would otherwise build one per Client (~0.1 s each)."""
    return ssl.create_default_context()


@pytest.fixture
def make_http(client_tls: ssl.SSLContext) -> Iterator[Callable[..., httpx.Client]]:
    made: list[httpx.Client] = []

    def make(url: str, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30.0)
        client = httpx.Client(base_url=url, verify=client_tls, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def consul_http(consul_url: str, make_http: Callable[..., httpx.Client]) -> httpx.Client:
    return make_http(consul_url)


@pytest.fixture
def make_consul_client() -> Iterator[Callable[..., consul.Consul]]:
    made: list[consul.Consul] = []

    def make(url: str, token: str | None = None, timeout: float | None = 30.0) -> consul.Consul:
        parts = urlsplit(url)
        client = consul.Consul(host=parts.hostname, port=parts.port, token=token, timeout=timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.http.session.close()


@pytest.fixture
def consul_client(
    consul_url: str, make_consul_client: Callable[..., consul.Consul]
) -> consul.Consul:
    return make_consul_client(consul_url)


@pytest.fixture
def timing() -> Timing:
    if real_agent_url():
        # A real agent raises intervals below 1 s to 1 s.
        return Timing(interval="1s", interval_s=1.0, deadline=20.0)
    return Timing(interval="100ms", interval_s=0.1, deadline=5.0)


# --------------------------------------------------------------------------------------
# A tiny HTTP server for HTTP checks to probe


class HealthTarget:
    """An application's health endpoint, as seen by the agent's HTTP check.

    Tests set `status`; `hang()` makes it stop answering so check timeouts can be observed.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.status = 200
        self._released = threading.Event()
        self._released.set()
        self._server = _TargetServer(self, tls)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/health", host: str = "127.0.0.1") -> str:
        scheme = "https" if self._server.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def hang(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def wait_released(self) -> None:
        self._released.wait(timeout=30)

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _TargetServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: HealthTarget, tls: ssl.SSLContext | None) -> None:
        self.target = target
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _TargetHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the worker thread, so a client that rejects
        # our certificate (a check without the CA) cannot stall the accept loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        try:
            super().finish_request(request, client_address)
        finally:
            if self.tls is not None:
                request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A check that timed out hangs up on us; that is the point, not an error.
        pass


class _TargetHandler(http.server.BaseHTTPRequestHandler):
    server: _TargetServer

    def do_GET(self) -> None:
        target = self.server.target
        target.wait_released()
        body = b"ok"
        self.send_response(target.status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def make_health_target() -> Iterator[Callable[..., HealthTarget]]:
    made: list[HealthTarget] = []

    def make(tls: ssl.SSLContext | None = None) -> HealthTarget:
        target = HealthTarget(tls)
        made.append(target)
        return target

    yield make
    for target in made:
        target.close()


@pytest.fixture
def health_target(make_health_target: Callable[..., HealthTarget]) -> HealthTarget:
    return make_health_target()


@pytest.fixture
def service_name() -> str:
    """A service name no other test (or leftover on a real agent) uses."""
    return f"t-{uuid.uuid4().hex[:10]}"
