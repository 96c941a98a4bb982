"""What affinity's Consul backend relies on in the agent's HTTP API, held against the stand-in.

Each test pins one behaviour ``affinity/builtin/consul/`` counts on, calling the
agent as the backend does: the registrar's own service definition sent through
python-consul2, and the reads and writes the registry makes. They run against
``tests/consul_agent/`` and, with ``AFFINITY_TEST_CONSUL=http://127.0.0.1:8500``,
against a real agent; those that need the stand-in (shrunk timers, ACL mode, a
CA its checks trust, its hooks) skip there. API: https://developer.hashicorp.com/consul/api-docs
"""

from __future__ import annotations

import base64
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import consul
import consul.base
import httpx
import pytest
import trustme

from affinity.builtin.consul.catalog import server_from_entry
from affinity.builtin.consul.options import ConsulOptions
from affinity.builtin.consul.registrar import ConsulRegistrar
from affinity.models import HealthStatus, Server
from affinity.testing import free_port
from affinity.web.names import OriginRules
from tests.consul.conftest import real_agent_url

if TYPE_CHECKING:
    from tests.consul.conftest import HealthTarget, Timing
    from tests.consul_agent import AgentStandIn

pytestmark = pytest.mark.consul

Entries = list[dict[str, Any]]


class Agent:
    """One agent, reached as the backend reaches it; removes what a test registered."""

    def __init__(self, http: httpx.Client, client: consul.Consul, prefix: str) -> None:
        self.http, self.client, self.prefix = http, client, prefix
        self.kv_prefix = f"affinity-test/{prefix}/"
        self.registered: list[str] = []
        real = real_agent_url() is not None
        options = ConsulOptions(
            service_prefix=f"{prefix}-",
            check_interval=1.0 if real else 0.1,
            check_timeout=1.0 if real else 0.2,
        )
        self.registrar = ConsulRegistrar(options)
        self.name = options.consul_name("web")

    def register_server(self, target: HealthTarget) -> Server:
        """Register as the registrar does: its definition, through python-consul2."""
        url = f"http://127.0.0.1:{target.port}"
        server = Server(id=f"{self.prefix}-s1", service="web", url=url, weight=3, meta={"z": "eu"})
        assert self.client.agent.service.register(**self.registrar.definition(server)) is True
        self.registered.append(server.id)
        return server

    def register(self, body: dict[str, Any]) -> httpx.Response:
        response = self.http.put("/v1/agent/service/register", json=body)
        if response.status_code == 200:
            self.registered.append(body.get("ID") or body["Name"])
        return response

    def health(self, name: str) -> Entries:
        entries: Entries = self.http.get(f"/v1/health/service/{name}").json()
        return entries

    def health_until(self, name: str, done: Callable[[Entries], bool], timeout: float) -> Entries:
        """Blocking reads of a service's health until ``done`` holds."""
        deadline, index, entries = time.monotonic() + timeout, 0, []
        while (remaining := deadline - time.monotonic()) > 0:
            wait = f"{int(remaining * 1000) + 1}ms"
            got = self.http.get(f"/v1/health/service/{name}", params={"index": index, "wait": wait})
            if done(entries := got.json()):
                return entries
            index = int(got.headers["X-Consul-Index"])
        raise AssertionError(f"{name}: condition not met within {timeout}s: {entries}")

    def index(self, path: str, **params: Any) -> int:
        return int(self.http.get(path, params=params).headers["X-Consul-Index"])

    def cleanup(self) -> None:
        for service_id in self.registered:
            self.http.put(f"/v1/agent/service/deregister/{service_id}")
        self.http.delete(f"/v1/kv/{self.kv_prefix}", params={"recurse": ""})


@pytest.fixture
def agent(
    consul_http: httpx.Client, consul_client: consul.Consul, service_name: str
) -> Iterator[Agent]:
    helper = Agent(consul_http, consul_client, service_name)
    yield helper
    helper.cleanup()


def status(entries: Entries, check_id: str) -> str | None:
    found = [c["Status"] for e in entries for c in e["Checks"] if c["CheckID"] == check_id]
    return found[0] if found else None


# -- registration ---------------------------------------------------------------------------


def test_the_registrars_definition_comes_back_in_the_shape_the_catalog_module_reads(
    agent: Agent, health_target: HealthTarget
) -> None:
    """The registrar's body (python-consul2's lowercase keys, durations as "1000ms") is
    accepted; ``/v1/health/service`` lists the instance with the node's ``serfHealth`` and
    its HTTP check, which starts critical; ``affinity/builtin/consul/catalog.py`` reads it
    back as the server registered. https://developer.hashicorp.com/consul/api-docs/health
    """
    health_target.status = 503
    server = agent.register_server(health_target)
    [entry] = agent.health(agent.name)
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth", f"service:{server.id}"]
    assert status([entry], "serfHealth") == "passing"
    assert status([entry], f"service:{server.id}") == "critical"
    service = entry["Service"]
    assert (service["ID"], service["Service"], service["Tags"]) == (
        server.id,
        agent.name,
        ["affinity"],
    )
    # The health target is a plain HTTP server on loopback: allowed as a deployment would.
    seen = server_from_entry(entry, f"{agent.prefix}-", OriginRules(allow_http=True))
    assert seen is not None
    assert (seen.url, seen.weight, dict(seen.meta)) == (server.url, 3, {"z": "eu"})
    assert (seen.health, seen.draining) == (HealthStatus.CRITICAL, False)


def test_a_body_key_consul_does_not_know_is_refused(agent: Agent) -> None:
    """400 in plain text; python-consul2 raises BadRequest, which
    ``affinity/builtin/consul/client.py`` turns into RegistrationFailed.
    https://developer.hashicorp.com/consul/api-docs/agent/service#register-service
    """
    response = agent.register({"Name": agent.prefix, "Colour": "blue"})
    assert response.status_code == 400
    assert response.text.startswith("Request decode failed") and "Colour" in response.text
    check = {"http": "http://127.0.0.1:1/", "interval": "1s", "bogus": 1}
    with pytest.raises(consul.base.BadRequest, match="400 Request decode failed"):
        agent.client.agent.service.register(agent.prefix, check=check)


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({f"k{i}": "v" for i in range(65)}, "more than 64 key/value pairs"),
        ({"a.b": "v"}, "Key contains invalid characters"),
        ({"consul-x": "v"}, "reserved for internal use"),
        ({"k": "v" * 513}, "Value is too long"),
    ],
)
def test_service_meta_consul_refuses_is_a_400(
    agent: Agent, meta: dict[str, str], reason: str
) -> None:
    """The rules ``check_meta`` (``affinity/builtin/consul/registrar.py``) applies at start-up.
    https://developer.hashicorp.com/consul/docs/services/configuration/services-configuration-reference#meta
    """
    response = agent.register({"Name": agent.prefix, "Meta": meta})
    assert response.status_code == 400
    assert response.text.startswith("Invalid Service Meta: ") and reason in response.text


def test_an_http_check_follows_the_answer_of_the_health_endpoint(
    agent: Agent, health_target: HealthTarget, timing: Timing
) -> None:
    """2xx is passing, 429 warning, another status critical, and so is no answer within the
    timeout: the server's 200 / 429 / 503 become the referral's statuses.
    https://developer.hashicorp.com/consul/docs/services/usage/checks#http-checks
    """
    check_id = f"service:{agent.register_server(health_target).id}"
    for code, expected in [(200, "passing"), (429, "warning"), (503, "critical"), (200, "passing")]:
        health_target.status = code
        agent.health_until(
            agent.name, lambda e, x=expected: status(e, check_id) == x, timing.deadline
        )
    health_target.hang()
    agent.health_until(agent.name, lambda e: status(e, check_id) == "critical", timing.deadline)


def test_an_https_check_verifies_the_name_it_is_given_or_skips_verification(
    make_standin: Callable[..., AgentStandIn],
    make_health_target: Callable[..., HealthTarget],
    make_http: Callable[..., httpx.Client],
    make_consul_client: Callable[..., consul.Consul],
    timing: Timing,
    tmp_path: Path,
) -> None:
    """``TLSServerName`` (set by the registrar with ``check_host``) names the certificate
    checked, ``TLSSkipVerify`` turns checking off, else the URL's host must match. Stand-in
    only: its checks trust a test CA.
    https://developer.hashicorp.com/consul/api-docs/agent/check#tlsservername
    """
    ca, tls = trustme.CA(), ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("app.internal").configure_cert(tls)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    url = make_standin(check_ca_file=str(tmp_path / "ca.pem")).url
    agent = Agent(make_http(url), make_consul_client(url), "tls")
    target = make_health_target(tls=tls).url()
    cases = {"named": {"TLSServerName": "app.internal"}, "skip": {"TLSSkipVerify": True}, "ip": {}}
    for sid, extra in cases.items():
        check = {"HTTP": target, "Interval": timing.interval, **extra}
        assert agent.register({"Name": "tls", "ID": sid, "Check": check}).status_code == 200

    def settled(entries: Entries) -> bool:
        return all(status(entries, f"service:{sid}") != "critical" for sid in ("named", "skip"))

    assert status(agent.health_until("tls", settled, timing.deadline), "service:ip") == "critical"


def test_maintenance_is_a_critical_check_that_outlives_a_new_registration(
    agent: Agent, health_target: HealthTarget
) -> None:
    """``_service_maintenance:<id>``, critical, the reason as notes (``health_of`` reads it
    as draining); registering again keeps it, so the registrar sets maintenance after every
    registration; an unknown ID is a 404, which python-consul2 answers with False.
    https://developer.hashicorp.com/consul/api-docs/agent/service#enable-maintenance-mode
    """
    server = agent.register_server(health_target)
    maintenance, service = f"_service_maintenance:{server.id}", agent.client.agent.service
    assert service.maintenance(server.id, "true", "draining") is True
    [check] = [c for c in agent.health(agent.name)[0]["Checks"] if c["CheckID"] == maintenance]
    assert (check["Status"], check["Notes"]) == ("critical", "draining")
    agent.register_server(health_target)
    assert status(agent.health(agent.name), maintenance) == "critical"
    assert service.maintenance(server.id, "false") is True
    assert status(agent.health(agent.name), maintenance) is None
    assert service.maintenance(f"{agent.prefix}-nope", "true") is False
    missing = agent.http.put(f"/v1/agent/service/maintenance/{server.id}")
    assert (missing.status_code, missing.text) == (400, "Missing value for enable")


def test_deregistering_removes_the_service_and_an_unknown_id_is_404(
    agent: Agent, health_target: HealthTarget
) -> None:
    """Afterwards ``/v1/agent/service/<id>`` is a 404, on which the registrar's heartbeat
    registers again; deregistering again is a 404, which python-consul2 answers with False.
    https://developer.hashicorp.com/consul/api-docs/agent/service#deregister-service
    """
    server = agent.register_server(health_target)
    assert agent.http.get(f"/v1/agent/service/{server.id}").json()["ID"] == server.id
    assert agent.client.agent.service.deregister(server.id) is True
    assert agent.health(agent.name) == []
    assert agent.http.get(f"/v1/agent/service/{server.id}").status_code == 404
    again = agent.http.put(f"/v1/agent/service/deregister/{server.id}")
    assert again.status_code == 404
    assert again.text.startswith(f'Unknown service ID "{server.id}"')
    assert agent.client.agent.service.deregister(server.id) is False


def test_the_agent_lists_its_services_by_id(agent: Agent, health_target: HealthTarget) -> None:
    """``/v1/agent/services``: what the heartbeat asks when ``/v1/agent/service/<id>`` is a 404
    (to tell a forgotten service from an agent without that endpoint).
    https://developer.hashicorp.com/consul/api-docs/agent/service#list-services
    """
    server = agent.register_server(health_target)
    services = agent.client.agent.services()
    assert services[server.id]["Service"] == agent.name
    assert services[server.id]["ID"] == server.id
    assert agent.client.agent.service.deregister(server.id) is True
    assert server.id not in agent.client.agent.services()


def test_a_service_critical_for_too_long_is_deregistered(
    agent: Agent, standin: AgentStandIn, timing: Timing
) -> None:
    """``DeregisterCriticalServiceAfter``, raised to the agent's minimum (1 min on Consul,
    0.6 s on this stand-in), plus up to one reaper period. Stand-in only (timers).
    https://developer.hashicorp.com/consul/api-docs/agent/check#deregistercriticalserviceafter
    """
    check = {"HTTP": f"http://127.0.0.1:{free_port()}/", "Interval": timing.interval}
    body = {"Name": agent.prefix, "Check": {**check, "DeregisterCriticalServiceAfter": "100ms"}}
    started = time.monotonic()
    assert agent.register(body).status_code == 200
    agent.health_until(agent.prefix, lambda entries: entries == [], 5.0)
    assert 0.6 <= time.monotonic() - started < 0.6 + 0.1 + 1.0


# -- discovery and blocking reads ----------------------------------------------------------


def test_catalog_services_maps_each_name_to_the_union_of_its_tags(agent: Agent) -> None:
    """What discovery reads (``consul`` is listed too); an unknown service's health is
    ``[]``, not a 404. https://developer.hashicorp.com/consul/api-docs/catalog#list-services
    """
    for sid, tags in (("a", ["affinity", "zone-a"]), ("b", ["affinity", "zone-b"])):
        assert agent.register({"Name": agent.prefix, "ID": sid, "Tags": tags}).status_code == 200
    services = agent.http.get("/v1/catalog/services").json()
    assert "consul" in services
    assert sorted(services[agent.prefix]) == ["affinity", "zone-a", "zone-b"]
    unknown = agent.http.get(f"/v1/health/service/{agent.prefix}-none")
    assert (unknown.status_code, unknown.json()) == (200, [])


def test_an_idle_blocking_read_ends_after_wait_plus_at_most_a_sixteenth(agent: Agent) -> None:
    """With the same index as the answer: the bound the backend's HTTP timeout allows for.
    python-consul2 hands the index back as the header's string.
    https://developer.hashicorp.com/consul/api-docs/features/blocking
    """
    assert agent.register({"Name": agent.prefix}).status_code == 200
    index, _ = agent.client.health.service(agent.prefix)
    assert isinstance(index, str)
    started = time.monotonic()
    again, _ = agent.client.health.service(agent.prefix, index=index, wait="1000ms")
    assert 1.0 <= time.monotonic() - started < 1.0 + 1 / 16 + 0.3
    assert again == index


@pytest.mark.parametrize("watch", ["health", "catalog", "kv"])
def test_a_blocking_read_answers_promptly_after_a_change_it_covers(
    agent: Agent,
    consul_url: str,
    make_http: Callable[..., httpx.Client],
    maybe_standin: AgentStandIn | None,
    watch: str,
) -> None:
    """A registration ends a health or catalog read, a KV write a read of its prefix, at
    once and with a larger index: how referrals see a server, a drain flag or settings.
    https://developer.hashicorp.com/consul/api-docs/features/blocking
    """
    path, params = {
        "health": (f"/v1/health/service/{agent.prefix}", {}),
        "catalog": ("/v1/catalog/services", {}),
        "kv": (f"/v1/kv/{agent.kv_prefix}", {"recurse": ""}),
    }[watch]
    index, reader, answered = agent.index(path, **params), make_http(consul_url), {}

    def read() -> None:
        answered["response"] = reader.get(path, params={**params, "index": index, "wait": "10s"})
        answered["at"] = time.monotonic()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    if maybe_standin is not None:  # on the stand-in, make sure the read waits first
        maybe_standin.wait_parked()
    if watch == "kv":
        assert agent.http.put(f"/v1/kv/{agent.kv_prefix}drain/s1", content=b"{}").json() is True
    else:
        assert agent.register({"Name": agent.prefix}).status_code == 200
    written = time.monotonic()
    thread.join(10)
    assert answered["at"] - written < 0.25
    assert int(answered["response"].headers["X-Consul-Index"]) > index


@pytest.mark.parametrize("wait", ["10", "abc"])
def test_a_wait_without_a_unit_is_refused(agent: Agent, wait: str) -> None:
    """``wait`` is a Go duration, so the backend sends "1500ms" (``go_duration`` in
    ``affinity/builtin/consul/options.py``).
    https://developer.hashicorp.com/consul/api-docs/features/blocking
    """
    response = agent.http.get("/v1/catalog/services", params={"index": "1", "wait": wait})
    assert (response.status_code, response.text) == (400, "Invalid wait time")


def test_the_index_starts_at_1_and_goes_back_on_a_restore_or_a_restart(
    standin: AgentStandIn, agent: Agent
) -> None:
    """Never 0, even on a fresh agent; lower after a snapshot restore (``force_index``) or an
    agent restarted without its data (``reset``), which ``next_index`` in
    ``affinity/builtin/consul/blocking.py`` follows. Stand-in only (hooks).
    https://developer.hashicorp.com/consul/api-docs/features/blocking#implementation-details
    """
    paths = ("/v1/kv/nothing", "/v1/health/service/nothing", "/v1/catalog/services")
    assert [agent.index(p) for p in paths] == [1, 1, 1]
    for port in range(5):
        assert agent.register({"Name": "app", "Port": port}).status_code == 200
    assert agent.index("/v1/health/service/app") > 2
    standin.force_index(2)
    assert agent.index("/v1/health/service/app") == 2
    standin.reset()
    assert (agent.health("app"), agent.index("/v1/catalog/services")) == ([], 1)


# -- KV -----------------------------------------------------------------------------------


def test_reading_a_missing_key_or_prefix_is_404_with_an_index(agent: Agent) -> None:
    """Empty body, ``X-Consul-Index`` set, so a watch can block on it; python-consul2
    answers ``(index, None)``. https://developer.hashicorp.com/consul/api-docs/kv#read-key
    """
    for params in ({}, {"recurse": ""}):
        response = agent.http.get(f"/v1/kv/{agent.kv_prefix}none", params=params)
        assert (response.status_code, response.content) == (404, b"")
        assert int(response.headers["X-Consul-Index"]) >= 1
    index, entries = agent.client.kv.get(agent.kv_prefix, recurse=True)
    assert entries is None and int(index) >= 1


def test_check_and_set_writes_only_over_the_version_read(agent: Agent) -> None:
    """``cas=0`` only creates, ``cas=<ModifyIndex>`` only replaces that version; the answer
    is ``true`` or ``false``: two referrals never store the same settings version.
    https://developer.hashicorp.com/consul/api-docs/kv#create-update-key
    """
    key, kv = agent.kv_prefix + "settings/x", agent.client.kv
    assert kv.put(key, b"1", cas=0) is True
    assert kv.put(key, b"2", cas=0) is False
    first = kv.get(key)[1]["ModifyIndex"]
    assert kv.put(key, b"2", cas=first) is True
    stale = agent.http.put(f"/v1/kv/{key}", content=b"3", params={"cas": str(first)})
    assert (stale.status_code, stale.text) == (200, "false")
    _, entry = kv.get(key)
    assert (entry["Value"], entry["CreateIndex"]) == (b"2", first)
    assert entry["ModifyIndex"] > first


def test_a_recursive_read_lists_the_prefix_in_key_order_with_values_as_bytes(
    agent: Agent,
) -> None:
    """Values are base64 on the wire, bytes from python-consul2; a delete answers ``true``,
    also for a key that is not there. https://developer.hashicorp.com/consul/api-docs/kv
    """
    p, kv = agent.kv_prefix, agent.client.kv
    for key, value in (("settings/b", b"\x00\xff"), ("drain/s1", b"{}"), ("settings/a", b"{}")):
        assert kv.put(p + key, value) is True
    assert [(e["Key"], e["Value"], e["Flags"]) for e in kv.get(p, recurse=True)[1]] == [
        (p + "drain/s1", b"{}", 0),
        (p + "settings/a", b"{}", 0),
        (p + "settings/b", b"\x00\xff", 0),
    ]
    raw = agent.http.get(f"/v1/kv/{p}settings/b").json()[0]["Value"]
    assert base64.b64decode(raw) == b"\x00\xff"
    assert kv.delete(p + "drain/s1") is True and kv.delete(p + "drain/s1") is True
    assert kv.get(p + "drain/", recurse=True)[1] is None


# -- ACLs and the stand-in's limits ---------------------------------------------------------


def test_with_acls_writes_need_the_token_and_anonymous_reads_see_nothing(
    make_standin: Callable[..., AgentStandIn],
    make_http: Callable[..., httpx.Client],
    make_consul_client: Callable[..., consul.Consul],
) -> None:
    """The token travels in ``X-Consul-Token``. Without one a write is a 403 "Permission
    denied" (the backend's RegistrationFailed) and a read is filtered; an unknown token is a
    403 "ACL not found". Stand-in only (ACL mode).
    https://developer.hashicorp.com/consul/api-docs/api-structure#authentication
    """
    token = "0b6e2f1c-5e3b-4b1e-9f0a-6d1f3c2a9e77"
    url = make_standin(acl_tokens=frozenset({token})).url
    assert make_consul_client(url, token=token).agent.service.register("app") is True
    assert make_consul_client(url, token=token).kv.put("k/1", b"v") is True
    anonymous = make_http(url)
    assert anonymous.put("/v1/kv/k/2", content=b"v").status_code == 403
    with pytest.raises(consul.base.ACLPermissionDenied, match="Permission denied"):
        make_consul_client(url).agent.service.register("app")
    assert anonymous.get("/v1/health/service/app").json() == []
    assert anonymous.get("/v1/catalog/services").json() == {}
    assert anonymous.get("/v1/kv/k/", params={"recurse": ""}).status_code == 404
    assert anonymous.get("/v1/agent/service/app").status_code == 403
    stranger = anonymous.get("/v1/catalog/services", headers={"X-Consul-Token": "nope"})
    assert (stranger.status_code, stranger.text) == (403, "ACL not found")


def test_parameters_the_backend_does_not_send_are_refused_not_ignored(
    standin: AgentStandIn, agent: Agent
) -> None:
    """A real agent would act on them; the stand-in does not model them and says so rather
    than answer as if they were absent. Stand-in only."""
    for path, param in [("/v1/health/service/app", "passing"), ("/v1/kv/k", "keys")]:
        response = agent.http.get(path, params={param: ""})
        assert response.status_code == 400 and f"?{param}" in response.text
