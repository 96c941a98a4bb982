"""The Consul registry backend against the stand-in (or a real agent with AFFINITY_TEST_CONSUL).

Why these tests: the backend is the only way a multi-host deployment learns its
servers, so each promise of the backend has one test here — a registration is seen
within 100 ms of the agent seeing it passing, a dead server leaves within its
check's interval + timeout, a forgetful agent gets the server back, an
unreachable agent leaves the last view in force (marked stale) and the view
recovers as soon as it answers, indexes that go backwards are followed, drain
flags and settings reach every referral — plus the plumbing that makes those
hold: option validation, the environment never overriding explicit settings,
one pooled connection per watch, tokens kept out of logs.

Each test uses its own service-name and KV prefixes, so it also runs against a
shared real agent; stand-in-only manipulations (reset, down, restart, freeze,
ACL mode) skip there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from affinity.builtin.consul import blocking
from affinity.builtin.consul.catalog import health_of, server_from_entry
from affinity.builtin.consul.client import PooledHTTPClient
from affinity.builtin.consul.options import ConsulOptions, parse_options
from affinity.builtin.consul.plugin import affinity_make_registrar, affinity_make_registry
from affinity.builtin.consul.registrar import ConsulRegistrar
from affinity.builtin.consul.registry import ConsulRegistry
from affinity.config import Config, load
from affinity.errors import ConfigError, RegistrationFailed, RegistryUnavailable
from affinity.models import HealthStatus, Server, SharedSettings
from affinity.plugin.manager import PluginManager
from affinity.plugin.registry import RegistryView
from affinity.plugin.settings import SettingsInForce
from tests.consul.conftest import real_agent_url

if TYPE_CHECKING:
    from tests.consul.conftest import HealthTarget, Timing
    from tests.consul_agent import AgentStandIn

pytestmark = pytest.mark.consul

ROOT = Path(__file__).resolve().parent.parent.parent


# --------------------------------------------------------------------------------------
# Helpers


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_config(
    path: Path, options: dict[str, Any], services: tuple[str, ...] = ("web",), server: str = ""
) -> Path:
    # The health targets of these tests are plain HTTP servers on loopback.
    lines = ['[registry]\nbackend = "consul"\nallow_http = true\n[registry.options]']
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    lines += [f"[services.{name}]" for name in services]
    if server:
        lines.insert(0, f"[server]\n{server}\n")
    path.write_text("\n".join(lines) + "\n")
    return path


class Consul:
    """Makes registries and registrars on one agent, each test under its own prefixes, and
    closes and cleans up everything at the end."""

    def __init__(self, url: str, tmp_path: Path, timing: Timing) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.timing = timing
        run = uuid.uuid4().hex[:8]
        self.prefix = f"t{run}-"
        self.kv_prefix = f"affinity-test/{run}/"
        self.closing: list[ConsulRegistry | ConsulRegistrar] = []
        self.registered: list[tuple[ConsulRegistrar, Server]] = []

    def options(self, **overrides: Any) -> dict[str, Any]:
        real = real_agent_url() is not None
        return {
            "address": self.url,
            "service_prefix": self.prefix,
            "kv_prefix": self.kv_prefix,
            "wait": 1.0,
            "timeout": 2.0,
            "backoff_cap": 0.3,
            "check_interval": self.timing.interval_s,
            "check_timeout": 1.0 if real else 0.2,
            **overrides,
        }

    def config(self, services: tuple[str, ...] = ("web",), **overrides: Any) -> Config:
        path = self.tmp_path / f"affinity-{uuid.uuid4().hex[:6]}.toml"
        return load(write_config(path, self.options(**overrides), services), env={})

    async def registry(self, services: tuple[str, ...] = ("web",), **overrides: Any) -> Any:
        registry = affinity_make_registry(self.config(services, **overrides))
        assert isinstance(registry, ConsulRegistry)
        self.closing.append(registry)
        await registry.start()
        return registry

    def registrar(self, **overrides: Any) -> ConsulRegistrar:
        registrar = affinity_make_registrar(self.config(**overrides))
        assert isinstance(registrar, ConsulRegistrar)
        self.closing.append(registrar)
        return registrar

    async def register(
        self, registrar: ConsulRegistrar, target: HealthTarget, server_id: str = "s1"
    ) -> Server:
        server = Server(
            id=f"{self.prefix}{server_id}",
            service="web",
            url=f"http://127.0.0.1:{target.port}",
            weight=3,
            meta={"zone": "eu"},
        )
        await registrar.register(server)
        self.registered.append((registrar, server))
        return server

    async def aclose(self) -> None:
        for registrar, server in self.registered:
            try:
                await registrar.deregister(server)
            except Exception:
                logging.getLogger(__name__).debug("cleanup of %s failed", server.id)
        for item in reversed(self.closing):
            await item.aclose()
        async with httpx.AsyncClient(base_url=self.url) as http:
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(f"/v1/kv/{self.kv_prefix}", params={"recurse": ""})


@pytest.fixture
async def consul(consul_url: str, tmp_path: Path, timing: Timing) -> AsyncIterator[Consul]:
    harness = Consul(consul_url, tmp_path, timing)
    yield harness
    await harness.aclose()


async def view_until(
    registry: ConsulRegistry, predicate: Callable[[RegistryView], bool], timeout: float
) -> RegistryView:
    """The first view that satisfies ``predicate``; fails after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    view = await registry.watch(-1, 0)
    while not predicate(view):
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"no view satisfied the condition in {timeout}s; last: {view}")
        view = await registry.watch(view.index, remaining)
    return view


async def logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float) -> None:
    """Wait for a log line: a handler sets an event when it is emitted (no polling)."""
    loop = asyncio.get_running_loop()
    seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                loop.call_soon_threadsafe(seen.set)

    watch = Watch()
    logging.getLogger().addHandler(watch)
    try:
        if text not in caplog.text:
            await asyncio.wait_for(seen.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"{text!r} was not logged within {timeout}s") from None
    finally:
        logging.getLogger().removeHandler(watch)


def status_of(view: RegistryView, server_id: str) -> HealthStatus | None:
    found = [s for s in view.servers if s.id == server_id]
    return found[0].health if found else None


def passing(server_id: str) -> Callable[[RegistryView], bool]:
    return lambda view: status_of(view, server_id) is HealthStatus.PASSING


def draining(server_id: str) -> Callable[[RegistryView], bool]:
    return lambda view: any(s.id == server_id and s.draining for s in view.servers)


# --------------------------------------------------------------------------------------
# Options: validated before anything connects, explicit settings win over the environment


def test_defaults_and_the_backend_answers_only_for_consul(tmp_path: Path) -> None:
    path = write_config(tmp_path / "a.toml", {})
    options = parse_options(load(path, env={}), env={})
    assert options.base_url == "http://127.0.0.1:8500"
    assert (options.kv_prefix, options.tag, options.wait) == ("affinity/", "affinity", 30.0)
    embedded = load(None, env={})
    assert affinity_make_registry(embedded) is None
    assert affinity_make_registrar(embedded) is None


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"adress": "x"}, "registry.options.adress"),
        ({"address": "ftp://x:1"}, "registry.options.address"),
        ({"address": "x:1", "port": 2}, "registry.options.address"),
        ({"port": 70000}, "registry.options.port"),
        ({"scheme": "tcp"}, "registry.options.scheme"),
        ({"wait": 0}, "registry.options.wait"),
        ({"wait": "30s"}, "registry.options.wait"),
        ({"check_interval": True}, "registry.options.check_interval"),
        ({"kv_prefix": "affinity"}, "registry.options.kv_prefix"),
        ({"kv_prefix": "/affinity/"}, "registry.options.kv_prefix"),
        ({"kv_prefix": "a/../b/"}, "registry.options.kv_prefix"),
        ({"service_prefix": "a b"}, "registry.options.service_prefix"),
        ({"tags": ["ok", "not ok"]}, "registry.options.tags[1]"),
        ({"token_file": "missing-token"}, "registry.options.token_file"),
        ({"ca_file": "ca.pem"}, "registry.options.ca_file"),
        ({"tls_skip_verify": "no"}, "registry.options.tls_skip_verify"),
        ({"watch_burst": 0}, "registry.options.watch_burst"),
    ],
)
def test_bad_options_name_the_key(tmp_path: Path, options: dict[str, Any], key: str) -> None:
    path = write_config(tmp_path / "affinity.toml", options)
    with pytest.raises(ConfigError) as caught:
        affinity_make_registry(load(path, env={}))
    assert caught.value.key == key
    assert caught.value.source == str(path)


def test_configure_checks_the_options_before_anything_is_made(tmp_path: Path) -> None:
    """``affinity check`` configures the plugins: a bad Consul option fails there."""
    path = write_config(tmp_path / "affinity.toml", {"wait": 0})
    with pytest.raises(ConfigError) as caught:
        PluginManager(autoload=False, env={}).configure(load(path, env={}))
    assert (caught.value.key, caught.value.source) == ("registry.options.wait", str(path))


def test_an_option_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path / "affinity.toml", {"wait": 5})
    options = parse_options(load(path, env={"AFFINITY_REGISTRY_OPTIONS_WAIT": "7"}), env={})
    assert options.wait == 7.0
    bad = load(path, env={"AFFINITY_REGISTRY_OPTIONS_WAIT": "forever"})
    with pytest.raises(ConfigError) as caught:
        parse_options(bad, env={})
    assert caught.value.source == "environment variable AFFINITY_REGISTRY_OPTIONS_WAIT"
    host = load(path, env={"AFFINITY_REGISTRY_OPTIONS_HOST": "10.0.0.2"})
    env = {"CONSUL_HTTP_ADDR": "elsewhere:1"}
    assert parse_options(host, env=env).base_url == "http://10.0.0.2:8500"  # explicit wins


def test_the_token_is_not_an_option(tmp_path: Path) -> None:
    path = write_config(tmp_path / "affinity.toml", {"token": "s3cret"})
    with pytest.raises(ConfigError) as caught:
        parse_options(load(path, env={}), env={})
    assert caught.value.key == "registry.options.token"
    assert "s3cret" not in str(caught.value)


def test_server_meta_consul_would_refuse_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "a.toml", {}, server='meta = { "a.b" = "x" }')
    with pytest.raises(ConfigError, match=r"server\.meta\.a\.b"):
        affinity_make_registrar(load(path, env={}))


def test_explicit_settings_win_over_the_consul_environment(tmp_path: Path) -> None:
    """python-consul2 0.1.5 lets CONSUL_HTTP_* override its arguments; affinity does not."""
    (tmp_path / "token").write_text("from-file\n")
    env = {
        "CONSUL_HTTP_ADDR": "https://elsewhere:1",
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_HTTP_TOKEN": "from-env",
    }
    path = write_config(tmp_path / "a.toml", {"address": "127.0.0.1:8501", "token_file": "token"})
    options = parse_options(load(path, env={}), env=env)
    assert (options.base_url, options.token) == ("http://127.0.0.1:8501", "from-file")
    assert "from-file" not in repr(options)
    # With nothing in the file, the environment is the fallback ...
    bare = parse_options(load(write_config(tmp_path / "b.toml", {}), env={}), env=env)
    assert (bare.base_url, bare.token) == ("https://elsewhere:1", "from-env")
    # ... and affinity's own variable beats the file.
    ours = parse_options(load(path, env={}), env={**env, "AFFINITY_CONSUL_TOKEN": "ours"})
    assert (ours.token, ours.token_source) == ("ours", "AFFINITY_CONSUL_TOKEN")


def test_example_configs_are_valid() -> None:
    """examples/consul's files load and make a registry and a registrar without connecting."""
    for name in ("referral.toml", "server.toml"):
        config = load(ROOT / "examples" / "consul" / name, env={})
        assert config.registry.backend == "consul"
        options = parse_options(config, env={})
        assert options.check_interval > 0 and options.kv_prefix.endswith("/")
        made = (affinity_make_registry if name == "referral.toml" else affinity_make_registrar)(
            config
        )
        assert made is not None


# --------------------------------------------------------------------------------------
# The blocking-query rules, without an agent


def test_index_rules() -> None:
    assert blocking.next_index(0, 0) == 1, "a returned 0 counts as 1: never a 0 after a read"
    assert blocking.next_index(5, 9) == 9
    assert blocking.next_index(10, 9) == 9, "backwards: the lower index is the new baseline"


def test_waits_are_jittered_down_and_client_timeouts_cover_them() -> None:
    waits = [blocking.jittered(30.0) for _ in range(200)]
    assert all(27.0 <= w <= 30.0 for w in waits) and len(set(waits)) > 1
    client = PooledHTTPClient(ConsulOptions(timeout=2.0))
    assert client._timeout([("index", 5), ("wait", "30000ms")]) == pytest.approx(2.0 + 30 * 17 / 16)
    assert client._timeout({"recurse": 1}) == 2.0


async def test_read_errors_back_off_under_the_cap() -> None:
    """While every read fails, the loop waits a full-jitter back-off that grows to the cap."""
    slept: list[float] = []
    enough = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= 40:
            enough.set()
            await asyncio.Event().wait()  # park the loop until it is cancelled

    async def fetch(index: int, wait: float) -> tuple[int, None]:
        raise RegistryUnavailable("connection refused")

    pacing = blocking.Pacing(wait=1.0, rate=1e6, burst=1000, backoff_cap=0.5, sleep=sleep)
    loop = blocking.BlockingLoop("services", fetch, lambda data: None, lambda *_: None, pacing)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(enough.wait(), 5.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert loop.status.failures == 40 and len(slept) == 40
    assert all(0.0 <= s <= 0.5 for s in slept)
    assert max(slept[20:]) > 0.2, "the ceiling grew past the first failure's 0.2 s"


async def test_token_bucket_turns_churn_into_polling() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = blocking.TokenBucket(2.0, 3, clock=lambda: now[0], sleep=sleep)
    for _ in range(9):
        await bucket.take()
    assert len(slept) == 6
    assert now[0] == pytest.approx(3.0), "3 at once, then 6 more at 2 per second"


# --------------------------------------------------------------------------------------
# Consul's words to affinity's


def entry(checks: list[dict[str, str]], **service: Any) -> dict[str, Any]:
    base = {
        "ID": "s1",
        "Service": "web",
        "Tags": ["affinity"],
        "Address": "10.0.0.5",
        "Port": 8443,
        "Meta": {"affinity_url": "https://s1.example.test", "affinity_weight": "2", "zone": "eu"},
    }
    return {"Node": {"Address": "10.0.0.1"}, "Service": {**base, **service}, "Checks": checks}


SERF = {"CheckID": "serfHealth", "Status": "passing"}


@pytest.mark.parametrize(
    ("checks", "status", "draining"),
    [
        ([SERF, {"CheckID": "service:s1", "Status": "passing"}], HealthStatus.PASSING, False),
        ([SERF, {"CheckID": "service:s1", "Status": "warning"}], HealthStatus.WARNING, False),
        ([SERF, {"CheckID": "service:s1", "Status": "critical"}], HealthStatus.CRITICAL, False),
        (
            [
                {"CheckID": "serfHealth", "Status": "critical"},
                {"CheckID": "c", "Status": "passing"},
            ],
            HealthStatus.CRITICAL,
            False,
        ),
        (
            [SERF, {"CheckID": "_service_maintenance:s1", "Status": "critical"}],
            HealthStatus.PASSING,
            True,
        ),
        (  # a self-drained server answers its check 429: still passing, draining
            [
                SERF,
                {"CheckID": "service:s1", "Status": "warning"},
                {"CheckID": "_service_maintenance:s1", "Status": "critical"},
            ],
            HealthStatus.PASSING,
            True,
        ),
        (
            [
                SERF,
                {"CheckID": "service:s1", "Status": "critical"},
                {"CheckID": "_service_maintenance:s1", "Status": "critical"},
            ],
            HealthStatus.CRITICAL,
            True,
        ),
        ([{"CheckID": "_node_maintenance", "Status": "critical"}], HealthStatus.MAINTENANCE, True),
        ([SERF, {"CheckID": "c", "Status": "bogus"}], HealthStatus.CRITICAL, False),
    ],
)
def test_check_states_map_to_health(
    checks: list[dict[str, str]], status: HealthStatus, draining: bool
) -> None:
    assert health_of(checks) == (status, draining)


def test_entries_become_servers_or_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    server = server_from_entry(entry([SERF]), "")
    assert server is not None
    assert (server.url, server.weight, dict(server.meta)) == (
        "https://s1.example.test",
        2,
        {"zone": "eu"},
    )
    bare = server_from_entry(entry([SERF], Meta=None), "")
    assert bare is not None and bare.url == "https://10.0.0.5:8443"
    prefixed = server_from_entry(entry([SERF], Service="app-web"), "app-")
    assert prefixed is not None and prefixed.service == "web"
    for bad in (
        entry([SERF], ID="../etc"),
        entry([SERF], Meta={"affinity_url": "https://evil.test/path"}),
        entry([SERF], Meta={"affinity_url": "https://x.test", "affinity_weight": "lots"}),
        # The checks of every other source: no metadata service, no plain http, no port 0.
        entry([SERF], Meta={"affinity_url": "https://169.254.169.254"}),
        entry([SERF], Meta={"affinity_url": "http://s1.example.test"}),
        entry([SERF], Meta=None, Address="0x7f000001"),
        entry([SERF], Meta=None, Port=0),
        {"Service": None},
    ):
        assert server_from_entry(bad, "") is None
    assert "skipping a Consul service entry" in caplog.text
    assert "metadata service" in caplog.text


# --------------------------------------------------------------------------------------
# Registration, health, deregistration, maintenance


async def test_registration_is_seen_within_100ms_of_the_agent_seeing_it_passing(
    consul: Consul, make_health_target: Callable[..., HealthTarget]
) -> None:
    target = make_health_target()
    target.status = 503
    registry = await consul.registry()
    server = await consul.register(consul.registrar(), target)
    first = await view_until(registry, lambda v: status_of(v, server.id) is not None, 5.0)
    assert status_of(first, server.id) is HealthStatus.CRITICAL, "a new check starts critical"
    registered = next(s for s in first.servers if s.id == server.id)
    assert (registered.url, registered.weight, dict(registered.meta)) == (
        server.url,
        3,
        {"zone": "eu"},
    )

    watching = asyncio.Event()

    async def agent_sees_passing() -> float:
        """A blocking query of our own on the agent: returns the moment the check passes."""
        name, index = consul.prefix + "web", 0
        async with httpx.AsyncClient(base_url=consul.url, timeout=30) as http:
            while True:
                r = await http.get(f"/v1/health/service/{name}", params={"index": index})
                index = int(r.headers["X-Consul-Index"])
                watching.set()
                checks = [c for e in r.json() for c in e["Checks"]]
                if checks and all(c["Status"] == "passing" for c in checks):
                    return time.monotonic()

    agent_task = asyncio.create_task(agent_sees_passing())
    await asyncio.wait_for(watching.wait(), 5.0)
    target.status = 200
    await view_until(registry, passing(server.id), consul.timing.deadline)
    seen_by_registry = time.monotonic()
    seen_by_agent = await asyncio.wait_for(agent_task, 5.0)
    lag = seen_by_registry - seen_by_agent
    logging.getLogger(__name__).info("registry saw passing %.1f ms after the agent", lag * 1000)
    assert lag < 0.1


@pytest.mark.parametrize("how", ["killed", "hangs"])
async def test_a_dead_server_leaves_within_interval_plus_timeout(
    consul: Consul, make_health_target: Callable[..., HealthTarget], how: str
) -> None:
    target = make_health_target()
    registry = await consul.registry()
    options = consul.options()
    server = await consul.register(consul.registrar(), target)
    await view_until(registry, passing(server.id), consul.timing.deadline)
    killed = time.monotonic()
    if how == "hangs":
        target.hang()  # alive but stuck: the probe times out
    else:
        target.close()  # the process is gone: connection refused
    await view_until(registry, lambda v: status_of(v, server.id) is not HealthStatus.PASSING, 10.0)
    took = time.monotonic() - killed
    bound = options["check_interval"] + options["check_timeout"]
    slack = 1.0 if real_agent_url() else 0.25
    logging.getLogger(__name__).info("%s server left the view after %.3f s", how, took)
    assert took <= bound + slack, f"{took:.2f}s > interval + timeout ({bound}s)"
    target.release()


async def test_maintenance_drains_and_deregistration_removes(
    consul: Consul, health_target: HealthTarget
) -> None:
    registry = await consul.registry()
    registrar = consul.registrar()
    server = await consul.register(registrar, health_target)
    await view_until(registry, passing(server.id), consul.timing.deadline)
    await registrar.set_maintenance(server, True, "draining")
    view = await view_until(registry, draining(server.id), 2.0)
    drained = next(s for s in view.servers if s.id == server.id)
    # As a KV drain: no new clients, and the ones there stay until the server sends them away.
    assert drained.keeps_clients and not drained.assignable
    await registrar.set_maintenance(server, False)
    await view_until(registry, passing(server.id), 2.0)
    await registrar.deregister(server)
    await view_until(registry, lambda v: status_of(v, server.id) is None, 2.0)
    await registrar.deregister(server)  # already gone: no error


async def test_discovery_watches_tagged_services_only(
    consul: Consul, health_target: HealthTarget
) -> None:
    registry = await consul.registry(services=())
    async with httpx.AsyncClient(base_url=consul.url) as http:
        for name, tags in (("app", ["affinity"]), ("redis", [])):
            body = {
                "Name": consul.prefix + name,
                "ID": f"{consul.prefix}{name}-1",
                "Tags": tags,
                "Port": health_target.port,
                "Address": "127.0.0.1",
            }
            assert (await http.put("/v1/agent/service/register", json=body)).status_code == 200
        try:
            view = await view_until(
                registry, lambda v: any(s.service == "app" for s in v.servers), 5.0
            )
            assert {s.service for s in view.servers} == {"app"}
        finally:
            for name in ("app", "redis"):
                await http.put(f"/v1/agent/service/deregister/{consul.prefix}{name}-1")


# --------------------------------------------------------------------------------------
# Trouble: a forgetful agent, an unreachable one, a frozen one, indexes going backwards


async def test_an_agent_that_lost_its_state_gets_the_server_back(
    consul: Consul, health_target: HealthTarget, standin: AgentStandIn
) -> None:
    registry = await consul.registry()
    registrar = consul.registrar()
    server = await consul.register(registrar, health_target)
    await view_until(registry, passing(server.id), 5.0)
    await registrar.set_maintenance(server, True, "draining")
    # Seen draining first: an assignable server the agent forgets would be held a while.
    await view_until(registry, draining(server.id), 3.0)
    await asyncio.to_thread(standin.reset)  # a -dev agent restart: everything forgotten
    await view_until(registry, lambda v: status_of(v, server.id) is None, 3.0)
    await registrar.heartbeat(server)
    # Registered again (critical until its check passes, so never assignable in between),
    # with maintenance mode restored: draining again.
    await view_until(registry, draining(server.id), 3.0)


async def test_the_heartbeat_registers_again_only_when_the_service_is_really_gone(
    make_standin: Callable[..., AgentStandIn],
    health_target: HealthTarget,
    tmp_path: Path,
    timing: Timing,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "affinity.server")
    agent = make_standin(agent_service_endpoint=False)  # every /v1/agent/service/<id>: 404
    harness = Consul(agent.url, tmp_path, timing)
    try:
        registry = await harness.registry()
        registrar = harness.registrar()
        server = await harness.register(registrar, health_target)
        await view_until(registry, passing(server.id), 5.0)
        index = agent.call(lambda: agent.state.index)
        await registrar.heartbeat(server)
        await registrar.heartbeat(server)
        assert agent.call(lambda: agent.state.index) == index, "not registered again"
        assert "registering again" not in caplog.text
        assert "asking /v1/agent/services from now on" in caplog.text
        await asyncio.to_thread(agent.reset)  # now it is really gone
        await registrar.heartbeat(server)
        assert "registering again" in caplog.text
        assert agent.call(lambda: server.id in agent.state.services)
    finally:
        await harness.aclose()


async def test_an_unreachable_agent_leaves_the_last_view_in_force_marked_stale(
    consul: Consul, health_target: HealthTarget, standin: AgentStandIn
) -> None:
    registry = await consul.registry()
    server = await consul.register(consul.registrar(), health_target)
    before = await view_until(registry, passing(server.id), 5.0)
    await asyncio.to_thread(standin.down)
    try:
        stale = await view_until(registry, lambda v: v.stale, 2.0)
        assert stale.servers == before.servers, "the last known servers stay"
        assert "unreachable" in stale.stale_reason
    finally:
        await asyncio.to_thread(standin.up)
    # The retries' pace is the shared back-off's, capped at `backoff_cap`
    # (tests/test_backoff.py); here only that the watch comes back, bounded generously.
    fresh = await view_until(registry, lambda v: not v.stale, 10.0)
    assert fresh.stale_reason == "" and passing(server.id)(fresh)


async def test_a_restarted_agent_is_followed(
    consul: Consul, health_target: HealthTarget, standin: AgentStandIn
) -> None:
    registry = await consul.registry()
    registrar = consul.registrar()
    server = await consul.register(registrar, health_target)
    await view_until(registry, passing(server.id), 5.0)
    await asyncio.to_thread(standin.restart)  # connections dropped; back empty, index at 1
    await registrar.heartbeat(server)  # the agent forgot it: registered again
    view = await view_until(registry, lambda v: not v.stale and passing(server.id)(v), 5.0)
    assert view.stale_reason == ""


async def test_a_frozen_agent_times_out_instead_of_hanging(
    consul: Consul, health_target: HealthTarget, standin: AgentStandIn
) -> None:
    registry = await consul.registry(timeout=0.5)
    server = await consul.register(consul.registrar(), health_target)
    await view_until(registry, passing(server.id), 5.0)
    frozen = time.monotonic()
    await asyncio.to_thread(standin.freeze)  # connections accepted, never answered
    try:
        view = await view_until(registry, lambda v: v.stale, 5.0)
        # wait (1 s) + Consul's jitter (wait/16) + timeout (0.5 s): the client timeout.
        assert time.monotonic() - frozen <= 1.0 * 17 / 16 + 0.5 + 0.3
        assert passing(server.id)(view), "the last view stays in force"
    finally:
        await asyncio.to_thread(standin.thaw)
    await view_until(registry, lambda v: not v.stale, 3.0)


async def test_an_index_that_goes_backwards_is_followed(
    consul: Consul,
    make_health_target: Callable[..., HealthTarget],
    standin: AgentStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "affinity.plugin.registry")
    registry = await consul.registry()
    registrar = consul.registrar()
    first = await consul.register(registrar, make_health_target(), "s1")
    await view_until(registry, passing(first.id), 5.0)
    await asyncio.to_thread(standin.force_index, 2)
    # The blocking read on the old index ends after one wait (1 s); then the loop notices.
    await logged(caplog, "index went backwards", 5.0)
    # Following the lower index, the next change shows at once; a loop still waiting on
    # the old index would see it only after another whole wait.
    second = await consul.register(registrar, make_health_target(), "s2")
    await view_until(registry, lambda v: status_of(v, second.id) is not None, 0.3)


async def test_an_index_reset_is_noticed_before_the_blocking_read_ends(
    consul: Consul,
    make_health_target: Callable[..., HealthTarget],
    standin: AgentStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "affinity.plugin.registry")
    # Blocking reads wait 300 s; only the non-blocking read beside them can notice in time.
    registry = await consul.registry(wait=300.0, reset_probe=0.1)
    registrar = consul.registrar()
    first = await consul.register(registrar, make_health_target(), "s1")
    await view_until(registry, passing(first.id), 5.0)
    reset = time.monotonic()
    await asyncio.to_thread(standin.force_index, 2)
    await logged(caplog, "went back", 10.0)
    print(f"index reset noticed in {time.monotonic() - reset:.3f}s (wait 300 s, probe 0.1 s)")
    second = await consul.register(registrar, make_health_target(), "s2")
    await view_until(registry, lambda v: status_of(v, second.id) is not None, 10.0)


async def test_after_a_reset_the_last_servers_are_kept_until_they_are_back(
    consul: Consul, health_target: HealthTarget, standin: AgentStandIn
) -> None:
    registry = await consul.registry(wait=300.0, reset_probe=0.1, reset_grace=120.0)
    registrar = consul.registrar()
    server = await consul.register(registrar, health_target)
    await view_until(registry, passing(server.id), 5.0)
    seen: list[RegistryView] = []

    async def record() -> None:
        view = await registry.watch(-1, 0)
        while True:
            seen.append(view)
            view = await registry.watch(view.index, 60.0)

    recorder = asyncio.create_task(record())
    try:
        reset = time.monotonic()
        await asyncio.to_thread(standin.reset)  # an agent back empty, index at 1
        held = await view_until(registry, lambda v: v.stale, 10.0)
        noticed = time.monotonic() - reset
        assert passing(server.id)(held), "the last servers stay while the agent lacks them"
        assert "keeping the last 1" in held.stale_reason
        await registrar.heartbeat(server)  # registers again: critical, then passing
        await view_until(registry, lambda v: not v.stale and passing(server.id)(v), 10.0)
        print(f"reset held after {noticed:.3f}s; fresh {time.monotonic() - reset:.3f}s after it")
    finally:
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
    assert all(passing(server.id)(v) for v in seen), "no view without the server: no 503"


async def test_a_server_that_does_not_come_back_leaves_after_the_grace(
    consul: Consul,
    make_health_target: Callable[..., HealthTarget],
    standin: AgentStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = await consul.registry(reset_probe=0.1, reset_grace=0.5)
    registrar = consul.registrar()
    back = await consul.register(registrar, make_health_target(), "s1")
    gone = await consul.register(registrar, make_health_target(), "s2")
    await view_until(registry, lambda v: passing(back.id)(v) and passing(gone.id)(v), 5.0)
    await asyncio.to_thread(standin.restart)
    await registrar.heartbeat(back)  # only s1 registers again
    view = await view_until(registry, lambda v: not v.stale and status_of(v, gone.id) is None, 10.0)
    assert "not back in Consul after 0.5s" in caplog.text
    await view_until(registry, passing(back.id), 10.0)
    assert view.stale_reason == ""


def test_the_reset_grace_is_derived_from_heartbeat_and_check(tmp_path: Path) -> None:
    path = write_config(tmp_path / "a.toml", {"check_interval": 2.0, "check_timeout": 1.0})
    assert parse_options(load(path, env={}), env={}).grace == 5.0 + 2.0 + 1.0
    path = write_config(tmp_path / "b.toml", {"reset_grace": 3.0})
    assert parse_options(load(path, env={}), env={}).grace == 3.0


# --------------------------------------------------------------------------------------
# KV: drain flags and shared settings, seen by every referral


async def test_a_drain_flag_reaches_every_registry(
    consul: Consul, health_target: HealthTarget
) -> None:
    # Blocking reads that wait 30 s: a flag seen within 10 s was answered by the write.
    one, two = await consul.registry(wait=30.0), await consul.registry(wait=30.0)
    server = await consul.register(consul.registrar(), health_target)
    for registry in (one, two):
        await view_until(registry, passing(server.id), 5.0)
    assert not await one.set_draining("unknown", True)
    assert await one.set_draining(server.id, True)
    for registry in (one, two):
        view = await view_until(registry, lambda v: any(s.draining for s in v.servers), 10.0)
        assert not next(s for s in view.servers if s.id == server.id).assignable
    assert await two.set_draining(server.id, False)
    await view_until(one, lambda v: not any(s.draining for s in v.servers), 1.0)


async def test_settings_are_versioned_with_cas_and_reach_servers(
    consul: Consul, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = await consul.registry(), await consul.registry()
    registrar = consul.registrar()
    index, documents = await registrar.watch_settings(0, 1.0)
    assert documents == {}
    waiting = asyncio.create_task(registrar.watch_settings(index, 30.0))
    # Whether the read is already blocking or not, a write after ``index`` answers it at once.
    await asyncio.sleep(0)
    assert (await one.put_settings("ipfilter", {"deny": ["10.0.0.0/8"]})).version == 1
    # Answered by the write, not by the end of the read's 30 s wait.
    _, seen = await asyncio.wait_for(waiting, 10.0)
    assert seen["ipfilter"].value == {"deny": ["10.0.0.0/8"]}
    assert (await two.put_settings("ipfilter", {"deny": []})).version == 2
    racing = await asyncio.gather(
        *(r.put_settings("ipfilter", {"n": i}) for i, r in enumerate((one, two, one)))
    )
    assert sorted(s.version for s in racing) == [3, 4, 5], "CAS: no version written twice"

    def at_version_5(view: RegistryView) -> bool:
        current = view.settings.get("ipfilter")
        return current is not None and current.version == 5

    await view_until(one, at_version_5, 2.0)
    await view_until(two, at_version_5, 2.0)
    async with httpx.AsyncClient(base_url=consul.url) as http:
        await http.put(f"/v1/kv/{consul.kv_prefix}settings/broken", content=b"{not json")
    await logged(caplog, "ignoring shared settings 'broken'", 5.0)
    with pytest.raises(RegistrationFailed):
        await one.put_settings("../x", {})


async def test_settings_stay_monotonic_when_the_agent_loses_its_kv(
    consul: Consul, standin: AgentStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    refusals: list[str] = []
    registry = await consul.registry()
    in_force = SettingsInForce(PluginManager(autoload=False, env={}), refused=refusals.append)
    await registry.put_settings("ipfilter", {"deny": ["10.0.0.0/8"]})
    before = await registry.put_settings("ipfilter", {"deny": ["10.0.0.0/8", "192.0.2.0/24"]})
    assert in_force.offer(before) and before.version == 2
    # An app server's settings watch, blocking for up to 300 s on the old index.
    registrar = consul.registrar(wait=300.0, reset_probe=0.1)
    index, _ = await registrar.watch_settings(0, 300.0)
    watching = asyncio.create_task(registrar.watch_settings(index, 300.0))
    await asyncio.to_thread(standin.reset)  # back empty: KV gone, index at 1
    await view_until(registry, lambda v: "ipfilter" not in v.settings, 5.0)
    after = await registry.put_settings("ipfilter", {"deny": []})
    assert after.version == 1, "the version counts again from 1 in the new key ..."
    assert after.identity > before.identity, "... in a newer epoch"
    _, delivered = await asyncio.wait_for(watching, 10.0)
    if "ipfilter" not in delivered:  # the probe saw the empty KV before the write
        _, delivered = await registrar.watch_settings(1, 10.0)
    assert delivered["ipfilter"].identity == after.identity
    view = await view_until(registry, lambda v: "ipfilter" in v.settings, 5.0)
    assert view.settings["ipfilter"].identity == after.identity
    assert in_force.offer(view.settings["ipfilter"])
    assert in_force.documents["ipfilter"].value == {"deny": []}
    # A document older than the one in force (a store that counted again without a new
    # epoch) is refused, logged and counted, once.
    older = SharedSettings(name="ipfilter", version=5, value={"deny": ["0.0.0.0/0"]})
    assert not in_force.offer(older) and not in_force.offer(older)
    assert refusals == ["ipfilter"]
    assert "refused shared settings 'ipfilter' version 5 whole" in caplog.text
    assert in_force.documents["ipfilter"] is view.settings["ipfilter"]


# --------------------------------------------------------------------------------------
# Connections and tokens


async def test_one_pooled_session_serves_every_call(
    consul: Consul, health_target: HealthTarget
) -> None:
    registrar = consul.registrar()
    server = await consul.register(registrar, health_target)
    for _ in range(20):
        await registrar.heartbeat(server)
    assert registrar.client.http.connections_opened == 1
    registry = await consul.registry()
    await view_until(registry, lambda v: status_of(v, server.id) is not None, 5.0)
    for draining in (True, False) * 5:
        assert await registry.set_draining(server.id, draining)
    # Every loop has taken the last write in: the view shows it.
    await registry.set_draining(server.id, True)
    await view_until(registry, lambda v: any(s.draining for s in v.servers), 5.0)
    # One kept-alive connection per blocking loop (kv, catalog, service) and one for writes.
    assert registry.client.http.connections_opened <= 4


@pytest.fixture
def acl_standin(make_standin: Callable[..., AgentStandIn]) -> AgentStandIn:
    return make_standin(acl_tokens=frozenset({"s3cr3t-consul-token"}))


async def test_the_token_comes_from_a_file_and_never_shows(
    acl_standin: AgentStandIn,
    tmp_path: Path,
    timing: Timing,
    health_target: HealthTarget,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    harness = Consul(acl_standin.url, tmp_path, timing)
    (tmp_path / "consul-token").write_text("s3cr3t-consul-token\n")
    # Whatever python-consul2 would take from the environment must not win.
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "wrong-token")
    try:
        registry = await harness.registry(token_file=str(tmp_path / "consul-token"))
        registrar = harness.registrar(token_file=str(tmp_path / "consul-token"))
        server = await harness.register(registrar, health_target)
        await view_until(registry, lambda v: status_of(v, server.id) is not None, 5.0)
        monkeypatch.delenv("CONSUL_HTTP_TOKEN")
        anonymous = harness.registrar()
        with pytest.raises(RegistrationFailed, match="Permission denied"):
            await anonymous.register(server)
    finally:
        await harness.aclose()
    assert "s3cr3t-consul-token" not in caplog.text
