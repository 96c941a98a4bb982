"""Conformance of the Consul stand-in (or a real agent) to the Consul API reference.

Why: affinity's Consul backend is tested against the stand-in, so the stand-in must behave
like an agent where it matters — casing, status codes, error texts, check statuses, index
and blocking semantics, KV CAS, ACL denials — and python-consul2 must see what it would see
against Consul. Each test names the checklist item (reference §8) it covers; the rest
cover the brief's additions (HTTP checks that really probe, outages, control hooks).
Run against a real agent with ``AFFINITY_TEST_CONSUL=http://127.0.0.1:8500``.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import consul
import consul.base
import httpx
import pytest
import requests
import trustme

from tests.consul_agent import AgentStandIn, StandInProcess, format_go_duration, parse_go_duration

if TYPE_CHECKING:
    from tests.consul.conftest import HealthTarget, Timing

pytestmark = pytest.mark.consul

T = TypeVar("T")

TTL_EXPIRED = "TTL expired (last output before timeout follows): "


# --------------------------------------------------------------------------------------
# Helpers


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll until `predicate` returns something truthy; checks run on intervals, so a
    bounded poll is the honest way to observe them."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def await_check(
    fetch: Callable[[], dict[str, Any] | None], status: str, timeout: float, what: str
) -> dict[str, Any]:
    """Poll a check (agent or catalog view) until it has `status`; return it."""

    def ready() -> dict[str, Any] | None:
        check = fetch()
        return check if check is not None and check["Status"] == status else None

    return wait_for(ready, timeout, what)


class Agent:
    """Raw-HTTP helpers over one agent; deregisters what it registered (real agents keep
    state between tests)."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.registered: list[str] = []
        self.kv_prefix = f"affinity-test/{uuid.uuid4().hex[:10]}/"

    def register(self, body: dict[str, Any], **params: str) -> httpx.Response:
        response = self.http.put("/v1/agent/service/register", json=body, params=params)
        if response.status_code == 200:
            keys = {key.lower(): value for key, value in body.items()}
            self.registered.append(keys.get("id") or keys["name"])
        return response

    def health(self, name: str, **params: Any) -> list[dict[str, Any]]:
        response = self.http.get(f"/v1/health/service/{name}", params=params)
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()
        return result

    def ids(self, name: str, **params: Any) -> set[str]:
        return {entry["Service"]["ID"] for entry in self.health(name, **params)}

    def agent_check(self, check_id: str) -> dict[str, Any] | None:
        checks: dict[str, dict[str, Any]] = self.http.get("/v1/agent/checks").json()
        return checks.get(check_id)

    def status(self, check_id: str) -> str | None:
        check = self.agent_check(check_id)
        return check["Status"] if check else None

    def catalog_check(self, name: str, check_id: str) -> dict[str, Any] | None:
        checks = self.http.get(f"/v1/health/checks/{name}").json()
        return next((c for c in checks if c["CheckID"] == check_id), None)

    def index(self, path: str, **params: Any) -> int:
        return int(self.http.get(path, params=params).headers["X-Consul-Index"])

    def ttl(self, action: str, check_id: str, note: str = "") -> httpx.Response:
        return self.http.put(f"/v1/agent/check/{action}/{check_id}", params={"note": note})

    def cleanup(self) -> None:
        for service_id in self.registered:
            self.http.put(f"/v1/agent/service/deregister/{service_id}")
        self.http.delete(f"/v1/kv/{self.kv_prefix}", params={"recurse": ""})


@pytest.fixture
def agent(consul_http: httpx.Client) -> Iterator[Agent]:
    helper = Agent(consul_http)
    yield helper
    helper.cleanup()


def ttl_service(name: str, service_id: str, **check: Any) -> dict[str, Any]:
    return {"Name": name, "ID": service_id, "Port": 9000, "Check": {"TTL": "30s", **check}}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def in_thread(func: Callable[[], T]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `func` in a thread; the dict gets `value` or `error`, and `done_at`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = func()
        except Exception as exc:
            box["error"] = exc
        box["done_at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def blocking_get(client: httpx.Client, path: str, **params: Any) -> Callable[[], httpx.Response]:
    """A GET to run in a thread, on a client of its own."""

    def get() -> httpx.Response:
        return client.get(path, params=params)

    return get


def await_blocked(standin: AgentStandIn | None, count: int = 1) -> None:
    """On the stand-in, wait until the blocking query is really parked server-side."""
    if standin is not None:
        wait_for(lambda: standin.blocking_queries >= count, 5.0, "a parked blocking query")


# --------------------------------------------------------------------------------------
# Go parsing helpers the stand-in relies on


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("90m", 5400.0), ("0", 0.0), ("1.5h", 5400.0)],
)
def test_go_durations_parse_like_time_parse_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "abc", "5 s", "1x"])
def test_go_durations_reject_what_go_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="time: invalid duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(10, "10s"), (90, "1m30s"), (0.1, "100ms"), (3600, "1h0m0s"), (0, "0s")]
)
def test_go_durations_format_like_duration_string(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


# --------------------------------------------------------------------------------------
# §8.1-4, 16: registration bodies, validation and response casing


def test_lowercase_python_consul2_body_gives_camelcase_health(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    """§8.1: python-consul2's lowercase keys are accepted; responses are CamelCase."""
    assert consul_client.agent.service.register(
        service_name, service_id=f"{service_name}-1", address="127.0.0.1", port=9001
    )
    agent.registered.append(f"{service_name}-1")
    [entry] = agent.health(service_name)
    assert set(entry) >= {"Node", "Service", "Checks"}
    node_keys = {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"}
    assert set(entry["Node"]) >= node_keys | {"CreateIndex", "ModifyIndex"}
    service = entry["Service"]
    assert set(service) >= {
        "ID", "Service", "Tags", "Address", "Meta", "Port", "Weights",
        "EnableTagOverride", "CreateIndex", "ModifyIndex",
    }  # fmt: skip
    assert service["Tags"] == []
    assert service["Weights"] == {"Passing": 1, "Warning": 1}
    assert (service["ID"], service["Service"], service["Port"]) == (
        f"{service_name}-1",
        service_name,
        9001,
    )
    serf = next(c for c in entry["Checks"] if c["CheckID"] == "serfHealth")
    assert set(serf) >= {
        "Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID",
        "ServiceName", "ServiceTags", "Type", "CreateIndex", "ModifyIndex",
    }  # fmt: skip
    assert serf["Status"] == "passing"


def test_python_consul2_health_returns_index_string_and_list(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    """§7.9: the index comes back as the header string; compare it as an int."""
    assert consul_client.agent.service.register(service_name)
    agent.registered.append(service_name)
    index, entries = consul_client.health.service(service_name)
    assert isinstance(index, str) and int(index) >= 1
    assert [e["Service"]["ID"] for e in entries] == [service_name]


def test_unknown_body_key_is_rejected(agent: Agent, service_name: str) -> None:
    """§8.2: unknown fields are refused, as DisallowUnknownFields makes Consul do."""
    response = agent.register({"Name": service_name, "Colour": "blue"})
    assert response.status_code == 400
    assert response.text.startswith("Request decode failed")
    assert "Colour" in response.text
    assert response.headers["Content-Type"].startswith("text/plain")


def test_unknown_check_key_raises_bad_request_in_python_consul2(
    consul_client: consul.Consul, service_name: str
) -> None:
    with pytest.raises(consul.base.BadRequest, match="400 Request decode failed"):
        consul_client.agent.service.register(service_name, check={"ttl": "10s", "bogus": 1})


def test_snake_case_and_any_case_keys_are_accepted(agent: Agent, service_name: str) -> None:
    body = {
        "NAME": service_name,
        "id": f"{service_name}-1",
        "enable_tag_override": True,
        "check": {"ttl": "10s", "deregister_critical_service_after": "1m", "status": "passing"},
    }
    assert agent.register(body).status_code == 200
    [entry] = agent.health(service_name)
    assert entry["Service"]["EnableTagOverride"] is True
    assert entry["Checks"][-1]["Status"] == "passing"


def test_wrongly_typed_field_is_a_decode_error(agent: Agent, service_name: str) -> None:
    response = agent.register({"Name": service_name, "Port": "80"})
    assert response.status_code == 400
    assert response.text.startswith("Request decode failed")


def test_missing_name_is_rejected(agent: Agent) -> None:
    """§8.3."""
    response = agent.register({"ID": "x", "Port": 1})
    assert (response.status_code, response.text) == (400, "Missing service name")


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])
def test_any_address_is_rejected(agent: Agent, service_name: str, address: str) -> None:
    """§8.3."""
    response = agent.register({"Name": service_name, "Address": address})
    assert (response.status_code, response.text) == (400, "Invalid service address")


def test_check_with_ttl_and_interval_is_rejected(agent: Agent, service_name: str) -> None:
    """§8.4."""
    body = {"Name": service_name, "Check": {"TTL": "10s", "Interval": "10s", "HTTP": "http://x/"}}
    response = agent.register(body)
    assert response.status_code == 400
    assert response.text == "Invalid check: Interval and TTL cannot both be specified"


def test_check_with_bad_status_is_rejected(agent: Agent, service_name: str) -> None:
    """§8.4."""
    response = agent.register({"Name": service_name, "Check": {"TTL": "10s", "Status": "ok"}})
    assert response.status_code == 400
    assert response.text == "Status for checks must 'passing', 'warning', 'critical'"


def test_http_check_without_interval_is_rejected(agent: Agent, service_name: str) -> None:
    response = agent.register({"Name": service_name, "Check": {"HTTP": "http://127.0.0.1/"}})
    assert response.status_code == 400
    assert response.text.startswith("Invalid check: Interval must be > 0")


def test_invalid_duration_string_is_a_decode_error(agent: Agent, service_name: str) -> None:
    response = agent.register({"Name": service_name, "Check": {"TTL": "abc"}})
    assert response.status_code == 400
    assert response.text == 'Request decode failed: time: invalid duration "abc"'


def test_numeric_duration_is_nanoseconds(agent: Agent, service_name: str) -> None:
    """A JSON number is read as nanoseconds: TTL 15 is 15 ns, valid but instantly expired."""
    assert agent.register({"Name": service_name, "Check": {"TTL": 15}}).status_code == 200
    check = agent.agent_check(f"service:{service_name}")
    assert check is not None and (check["Type"], check["Status"]) == ("ttl", "critical")


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({f"k{i}": "v" for i in range(65)}, "more than 64 key/value pairs"),
        ({"a.b": "v"}, "Key contains invalid characters"),
        ({"consul-x": "v"}, "reserved for internal use"),
        ({"k": "v" * 513}, "Value is too long"),
    ],
)
def test_meta_validation(
    agent: Agent, service_name: str, meta: dict[str, str], reason: str
) -> None:
    """§8.16."""
    response = agent.register({"Name": service_name, "Meta": meta})
    assert response.status_code == 400
    assert response.text.startswith("Invalid Service Meta: ")
    assert reason in response.text


def test_weights_are_validated_and_echoed(agent: Agent, service_name: str) -> None:
    bad = agent.register({"Name": service_name, "Weights": {"Passing": 0, "Warning": 1}})
    assert bad.status_code == 400
    assert bad.text.startswith("Invalid Weights: ")
    good = agent.register({"Name": service_name, "Weights": {"Passing": 10, "Warning": 1}})
    assert good.status_code == 200
    assert agent.health(service_name)[0]["Service"]["Weights"] == {"Passing": 10, "Warning": 1}


def test_python_consul2_cannot_send_weights(consul_client: consul.Consul) -> None:
    """§6: `weights` is not a register() argument in python-consul2 0.1.5."""
    with pytest.raises(TypeError, match="weights"):
        consul_client.agent.service.register("x", weights={"Passing": 1})


def test_reregistering_replaces_the_definition(agent: Agent, service_name: str) -> None:
    assert agent.register({"Name": service_name, "Port": 1, "Tags": ["a"]}).status_code == 200
    first = agent.health(service_name)[0]["Service"]
    assert agent.register({"Name": service_name, "Port": 2, "Meta": {"m": "1"}}).status_code == 200
    [entry] = agent.health(service_name)
    assert (entry["Service"]["Port"], entry["Service"]["Tags"]) == (2, [])
    assert entry["Service"]["Meta"] == {"m": "1"}
    assert entry["Service"]["CreateIndex"] == first["CreateIndex"]
    assert entry["Service"]["ModifyIndex"] > first["ModifyIndex"]


# --------------------------------------------------------------------------------------
# Check ids, names, replace-existing-checks


def test_check_ids_follow_consul_naming(agent: Agent, service_name: str) -> None:
    one = agent.register({"Name": service_name, "ID": "one", "Check": {"TTL": "30s"}})
    two = agent.register(
        {"Name": service_name, "ID": "two", "Checks": [{"TTL": "30s"}, {"TTL": "30s"}]}
    )
    assert (one.status_code, two.status_code) == (200, 200)
    one_check = agent.agent_check("service:one")
    assert one_check is not None
    assert one_check["Name"] == f"Service '{service_name}' check"
    assert one_check["Type"] == "ttl"
    assert agent.agent_check("service:two:1") is not None
    assert agent.agent_check("service:two:2") is not None
    assert agent.agent_check("service:two") is None


def test_replace_existing_checks(agent: Agent, service_name: str) -> None:
    checks = [{"CheckID": "a", "TTL": "30s"}, {"CheckID": "b", "TTL": "30s"}]
    assert agent.register({"Name": service_name, "Checks": checks}).status_code == 200
    assert agent.register({"Name": service_name, "Checks": checks[:1]}).status_code == 200
    assert agent.agent_check("b") is not None, "without the flag, checks are upserted"
    replaced = agent.register(
        {"Name": service_name, "Checks": checks[:1]}, **{"replace-existing-checks": "true"}
    )
    assert replaced.status_code == 200
    assert agent.agent_check("a") is not None
    assert agent.agent_check("b") is None


def test_reregistering_keeps_check_status_and_output(agent: Agent, service_name: str) -> None:
    body = ttl_service(service_name, service_name)
    assert agent.register(body).status_code == 200
    assert agent.ttl("pass", f"service:{service_name}", "fine").status_code == 200
    assert agent.register(body).status_code == 200
    check = agent.agent_check(f"service:{service_name}")
    assert check is not None
    assert (check["Status"], check["Output"]) == ("passing", "fine")


# --------------------------------------------------------------------------------------
# §8.5-7, 9: TTL checks


def test_new_ttl_check_is_critical_until_passed(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    """§8.5, through python-consul2 (`Check.ttl` sends no Status)."""
    sid = f"{service_name}-1"
    assert consul_client.agent.service.register(
        service_name, service_id=sid, check=consul.Check.ttl("30s")
    )
    agent.registered.append(sid)
    assert agent.status(f"service:{sid}") == "critical"
    assert consul_client.health.service(service_name, passing=True)[1] == []
    assert len(consul_client.health.service(service_name)[1]) == 1
    assert consul_client.agent.check.ttl_pass(f"service:{sid}", "load=0.42")
    _, entries = consul_client.health.service(service_name, passing=True)
    assert [e["Service"]["ID"] for e in entries] == [sid]
    check = entries[0]["Checks"][-1]
    assert (check["Status"], check["Output"]) == ("passing", "load=0.42")


def test_ttl_expiry_turns_critical_with_consul_output(
    agent: Agent, service_name: str, timing: Timing
) -> None:
    """§8.6."""
    check_id = f"service:{service_name}"
    body = {"Name": service_name, "Check": {"TTL": timing.ttl, "Status": "passing"}}
    assert agent.register(body).status_code == 200
    assert agent.ttl("pass", check_id, "alive").status_code == 200
    started = time.monotonic()
    check = await_check(
        lambda: agent.catalog_check(service_name, check_id),
        "critical",
        timing.deadline,
        "the TTL to expire",
    )
    assert time.monotonic() - started >= timing.ttl_s * 0.9
    assert check["Output"] == TTL_EXPIRED + "alive"
    assert agent.ids(service_name, passing="") == set()


def test_ttl_updates_reset_the_clock(
    agent: Agent, service_name: str, standin: AgentStandIn
) -> None:
    check_id = f"service:{service_name}"
    assert agent.register({"Name": service_name, "Check": {"TTL": "300ms"}}).status_code == 200
    deadline = time.monotonic() + 0.7
    while time.monotonic() < deadline:  # heartbeats every 100 ms, for longer than the TTL
        assert agent.ttl("pass", check_id).status_code == 200
        assert agent.status(check_id) == "passing"
        time.sleep(0.1)  # pacing the keep-alives under test, not waiting for an event
    wait_for(lambda: agent.status(check_id) == "critical", 3.0, "expiry once keep-alives stop")


def test_warning_is_excluded_by_passing_but_listed_without(agent: Agent, service_name: str) -> None:
    """§8.7."""
    assert agent.register(ttl_service(service_name, service_name)).status_code == 200
    assert agent.ttl("warn", f"service:{service_name}", "slow").status_code == 200
    assert agent.ids(service_name) == {service_name}
    assert agent.ids(service_name, passing="") == set()
    assert agent.ids(service_name, passing="true") == set()
    assert agent.ids(service_name, passing="false") == {service_name}


def test_invalid_passing_flag_is_rejected(agent: Agent, service_name: str) -> None:
    response = agent.http.get(f"/v1/health/service/{service_name}", params={"passing": "yes"})
    assert response.status_code == 400


def test_fail_sets_critical(consul_client: consul.Consul, agent: Agent, service_name: str) -> None:
    assert (
        agent.register(ttl_service(service_name, service_name, Status="passing")).status_code == 200
    )
    assert consul_client.agent.check.ttl_fail(f"service:{service_name}", "broken")
    check = agent.agent_check(f"service:{service_name}")
    assert check is not None
    assert (check["Status"], check["Output"]) == ("critical", "broken")


def test_check_update_endpoint(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    """§2.5: python-consul2 has no update(); send it through its HTTP client (§6)."""
    check_id = f"service:{service_name}"
    assert agent.register(ttl_service(service_name, service_name)).status_code == 200
    ok = consul_client.http.put(
        consul.base.CB.bool(),
        f"/v1/agent/check/update/{check_id}",
        data=json.dumps({"Status": "warning", "Output": "queue=90%"}),
    )
    assert ok is True
    check = agent.agent_check(check_id)
    assert check is not None
    assert (check["Status"], check["Output"]) == ("warning", "queue=90%")
    bad = agent.http.put(f"/v1/agent/check/update/{check_id}", json={"Status": "ok"})
    assert (bad.status_code, bad.text) == (400, "Invalid check status: 'ok'")
    unknown = agent.http.put(f"/v1/agent/check/update/{check_id}", json={"State": "passing"})
    assert unknown.status_code == 400
    assert unknown.text.startswith("Request decode failed")


def test_pass_on_unknown_check_is_500(
    consul_client: consul.Consul, agent: Agent, maybe_standin: AgentStandIn | None
) -> None:
    """§8.9; a real current agent may answer 404 "Unknown check ID" instead."""
    response = agent.ttl("pass", "no-such-check")
    if maybe_standin is None and response.status_code == 404:
        assert response.text.startswith('Unknown check ID "no-such-check"')
        return
    assert response.status_code == 500
    assert response.text == 'CheckID "no-such-check" does not have associated TTL'
    with pytest.raises(consul.base.ConsulException, match=r"^500 .*does not have associated TTL"):
        consul_client.agent.check.ttl_pass("no-such-check")


def test_pass_on_a_non_ttl_check_is_500(agent: Agent, service_name: str) -> None:
    body = {
        "Name": service_name,
        "Check": {"HTTP": f"http://127.0.0.1:{closed_port()}/", "Interval": "10s"},
    }
    assert agent.register(body).status_code == 200
    response = agent.ttl("pass", f"service:{service_name}")
    assert response.status_code == 500
    assert "does not have associated TTL" in response.text


def test_unknown_check_404_mode(
    make_standin: Callable[..., AgentStandIn], make_http: Callable[..., httpx.Client]
) -> None:
    """Current agents answer 404 for unknown check IDs; the stand-in can emulate that."""
    standin = make_standin(unknown_check_404=True)
    response = make_http(standin.url).put("/v1/agent/check/pass/nope")
    assert response.status_code == 404
    assert response.text == (
        'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.'
    )


def test_output_only_changes_reach_the_catalog_late(
    agent: Agent, service_name: str, standin: AgentStandIn
) -> None:
    """§2.4: status changes sync at once; output-only changes wait check_update_interval."""
    check_id = f"service:{service_name}"
    assert agent.register(ttl_service(service_name, service_name)).status_code == 200
    assert agent.ttl("pass", check_id, "load=1").status_code == 200
    assert agent.ttl("pass", check_id, "load=2").status_code == 200
    live = agent.agent_check(check_id)
    catalog = agent.catalog_check(service_name, check_id)
    assert live is not None and catalog is not None
    assert (live["Output"], catalog["Output"]) == ("load=2", "load=1")
    assert agent.http.post("/_standin/sync-checks").status_code == 200
    catalog = agent.catalog_check(service_name, check_id)
    assert catalog is not None and catalog["Output"] == "load=2"


def test_long_ttl_output_is_truncated(agent: Agent, service_name: str) -> None:
    body = ttl_service(service_name, service_name, OutputMaxSize=10)
    assert agent.register(body).status_code == 200
    assert agent.ttl("pass", f"service:{service_name}", "x" * 25).status_code == 200
    check = agent.agent_check(f"service:{service_name}")
    assert check is not None
    assert check["Output"] == "xxxxxxxxxx ... (captured 10 of 25 bytes)"


# --------------------------------------------------------------------------------------
# §8.8: DeregisterCriticalServiceAfter


def test_deregister_critical_service_after_with_minimum_clamp(
    consul_client: consul.Consul, agent: Agent, service_name: str, standin: AgentStandIn
) -> None:
    """§8.8: "100ms" is raised to the minimum (0.6 s here, 1 min on Consul), then the
    reaper (every 0.1 s here, 30 s on Consul) removes the service."""
    dead = f"http://127.0.0.1:{closed_port()}/health"
    started = time.monotonic()
    check = consul.Check.http(dead, "100ms", timeout="100ms", deregister="100ms")
    assert consul_client.agent.service.register(service_name, check=check)
    wait_for(lambda: agent.ids(service_name) == set(), 5.0, "the reaper to deregister")
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 0.6 + 0.1 + 1.0
    assert agent.agent_check(f"service:{service_name}") is None


def test_recovered_check_is_not_reaped(
    agent: Agent, service_name: str, standin: AgentStandIn
) -> None:
    body = ttl_service(service_name, service_name, TTL="5s", DeregisterCriticalServiceAfter="1ms")
    assert agent.register(body).status_code == 200
    assert agent.ttl("pass", f"service:{service_name}").status_code == 200
    assert agent.ids(service_name) == {service_name}
    assert standin.call(lambda: standin.state.reap_critical()) is None
    assert agent.ids(service_name) == {service_name}


# --------------------------------------------------------------------------------------
# §8.10-11: deregistration and maintenance


def test_deregister_unknown_service_is_404(consul_client: consul.Consul, agent: Agent) -> None:
    """§8.10."""
    response = agent.http.put("/v1/agent/service/deregister/nope")
    assert response.status_code == 404
    assert response.text == (
        'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.'
    )
    assert consul_client.agent.service.deregister("nope") is False


def test_deregister_removes_service_and_checks(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    assert agent.register(ttl_service(service_name, service_name)).status_code == 200
    assert consul_client.agent.service.deregister(service_name) is True
    assert agent.health(service_name) == []
    assert agent.agent_check(f"service:{service_name}") is None


def test_maintenance_mode_adds_and_removes_critical_check(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    """§8.11, through python-consul2 (which sends enable=True)."""
    sid = service_name
    assert agent.register(ttl_service(service_name, sid, Status="passing")).status_code == 200
    maint_id = f"_service_maintenance:{sid}"
    assert consul_client.agent.service.maintenance(sid, True, "draining")
    check = agent.agent_check(maint_id)
    assert check is not None
    assert (check["Status"], check["Name"], check["Notes"]) == (
        "critical",
        "Service Maintenance Mode",
        "draining",
    )
    assert check["ServiceID"] == sid
    assert agent.ids(service_name, passing="") == set()
    assert consul_client.agent.service.maintenance(sid, True)  # idempotent
    assert consul_client.agent.service.maintenance(sid, False)
    assert agent.agent_check(maint_id) is None
    assert agent.ids(service_name, passing="") == {sid}


def test_maintenance_default_reason(agent: Agent, service_name: str) -> None:
    assert agent.register(ttl_service(service_name, service_name)).status_code == 200
    response = agent.http.put(f"/v1/agent/service/maintenance/{service_name}?enable=1")
    assert response.status_code == 200
    check = agent.agent_check(f"_service_maintenance:{service_name}")
    assert check is not None
    assert "no reason was provided" in check["Notes"]


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("", 400, "Missing value for enable"),
        ("?enable=maybe", 400, 'Invalid value for enable: "maybe"'),
    ],
)
def test_maintenance_parameter_errors(
    agent: Agent, service_name: str, query: str, status: int, text: str
) -> None:
    assert agent.register(ttl_service(service_name, service_name)).status_code == 200
    response = agent.http.put(f"/v1/agent/service/maintenance/{service_name}{query}")
    assert (response.status_code, response.text) == (status, text)


def test_maintenance_of_unknown_service_is_404(agent: Agent) -> None:
    response = agent.http.put("/v1/agent/service/maintenance/nope?enable=true")
    assert response.status_code == 404


def test_node_maintenance_fails_every_service(
    consul_client: consul.Consul, agent: Agent, service_name: str, standin: AgentStandIn
) -> None:
    assert (
        agent.register(ttl_service(service_name, service_name, Status="passing")).status_code == 200
    )
    assert consul_client.agent.maintenance(True, "kernel upgrade")
    assert agent.ids(service_name, passing="") == set()
    assert agent.status("_node_maintenance") == "critical"
    assert consul_client.agent.maintenance(False)
    assert agent.ids(service_name, passing="") == {service_name}


# --------------------------------------------------------------------------------------
# HTTP checks that really probe


def _register_http_check(agent: Agent, name: str, url: str, timing: Timing, **extra: Any) -> str:
    check = {"HTTP": url, "Interval": timing.interval, "Timeout": "2s", **extra}
    response = agent.register({"Name": name, "ID": name, "Port": 1, "Check": check})
    assert response.status_code == 200, response.text
    return f"service:{name}"


def test_http_check_follows_target_status(
    agent: Agent, service_name: str, timing: Timing, health_target: HealthTarget
) -> None:
    """2xx → passing, 429 → warning, anything else → critical, within an interval or so."""
    url = health_target.url()
    check_id = _register_http_check(agent, service_name, url, timing)
    for code, expected in [(200, "passing"), (429, "warning"), (503, "critical"), (200, "passing")]:
        health_target.status = code
        await_check(lambda: agent.agent_check(check_id), expected, timing.deadline, f"{code}")
    check = agent.catalog_check(service_name, check_id)
    assert check is not None
    assert check["Output"] == f"HTTP GET {url}: 200 OK Output: ok"
    assert (check["Type"], check["Interval"]) == ("http", format_go_duration(timing.interval_s))
    assert agent.ids(service_name, passing="") == {service_name}


def test_http_check_output_for_error_status(
    agent: Agent, service_name: str, timing: Timing, health_target: HealthTarget
) -> None:
    health_target.status, health_target.body = 503, b"db down"
    check_id = _register_http_check(agent, service_name, health_target.url(), timing)
    wait_for(lambda: (agent.agent_check(check_id) or {}).get("Output"), timing.deadline, "a probe")
    check = agent.agent_check(check_id)
    assert check is not None
    assert check["Status"] == "critical"
    assert (
        check["Output"]
        == f"HTTP GET {health_target.url()}: 503 Service Unavailable Output: db down"
    )


def test_http_check_connection_refused(agent: Agent, service_name: str, timing: Timing) -> None:
    url = f"http://127.0.0.1:{closed_port()}/health"
    check_id = _register_http_check(agent, service_name, url, timing, Status="passing")
    check = await_check(
        lambda: agent.agent_check(check_id),
        "critical",
        timing.deadline,
        "the refused probe",
    )
    assert check["Output"].startswith(f'Get "{url}": dial tcp ')
    assert check["Output"].endswith("connect: connection refused")


def test_http_check_timeout(
    agent: Agent, service_name: str, timing: Timing, health_target: HealthTarget
) -> None:
    health_target.hang()
    url = health_target.url()
    check_id = _register_http_check(
        agent, service_name, url, timing, Status="passing", Timeout="200ms"
    )
    check = await_check(
        lambda: agent.agent_check(check_id),
        "critical",
        timing.deadline,
        "the probe to time out",
    )
    assert check["Output"].startswith(f'Get "{url}": ')
    assert "Client.Timeout exceeded" in check["Output"]


def test_http_check_sends_method_headers_and_agent_identity(
    agent: Agent, service_name: str, timing: Timing, health_target: HealthTarget
) -> None:
    url = health_target.url()
    _register_http_check(agent, service_name, url, timing, Method="PUT", Header={"X-Probe": ["1"]})
    method, headers = wait_for(lambda: health_target.requests[:1], timing.deadline, "a probe")[0]
    assert method == "PUT"
    assert headers.get("X-Probe") == "1"
    assert headers.get("User-Agent") == "Consul Health Check"


def test_http_check_thresholds(
    agent: Agent, service_name: str, timing: Timing, health_target: HealthTarget
) -> None:
    """FailuresBeforeWarning/Critical: a passing check degrades to warning, and turns
    critical only after the third consecutive failure."""
    health_target.status = 500
    check_id = _register_http_check(
        agent,
        service_name,
        health_target.url(),
        timing,
        Status="passing",
        FailuresBeforeWarning=1,
        FailuresBeforeCritical=3,
    )
    wait_for(lambda: agent.status(check_id) == "warning", timing.deadline, "the first failure")
    wait_for(lambda: agent.status(check_id) == "critical", timing.deadline, "the third failure")
    assert len(health_target.requests) >= 3


def test_http_check_via_python_consul2_helper(
    consul_client: consul.Consul,
    agent: Agent,
    service_name: str,
    timing: Timing,
    health_target: HealthTarget,
) -> None:
    check = consul.Check.http(health_target.url(), timing.interval, timeout="1s", deregister="10m")
    assert consul_client.agent.service.register(service_name, port=80, check=check)
    agent.registered.append(service_name)
    wait_for(
        lambda: agent.status(f"service:{service_name}") == "passing", timing.deadline, "passing"
    )


def test_https_check_tls_options(
    make_standin: Callable[..., AgentStandIn],
    make_health_target: Callable[..., HealthTarget],
    make_http: Callable[..., httpx.Client],
    timing: Timing,
    tmp_path: Path,
) -> None:
    """TLSServerName picks the name verified; TLSSkipVerify skips verification."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("app.internal").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    target = make_health_target(tls=server_ctx)
    standin = make_standin(check_ca_file=str(ca_file))
    agent = Agent(make_http(standin.url))
    named = _register_http_check(agent, "named", target.url(), timing, TLSServerName="app.internal")
    unnamed = _register_http_check(agent, "unnamed", target.url(), timing, Status="passing")
    skip = _register_http_check(agent, "skip", target.url(), timing, TLSSkipVerify=True)
    wait_for(lambda: agent.status(named) == "passing", 5.0, "verified TLS check")
    wait_for(lambda: agent.status(skip) == "passing", 5.0, "skip-verify TLS check")
    failed = await_check(
        lambda: agent.agent_check(unnamed),
        "critical",
        5.0,
        "name mismatch",
    )
    assert "tls: failed to verify certificate: x509:" in failed["Output"]


def test_tcp_check(
    agent: Agent, service_name: str, timing: Timing, health_target: HealthTarget
) -> None:
    ok = {"TCP": f"127.0.0.1:{health_target.port}", "Interval": timing.interval}
    assert agent.register({"Name": service_name, "ID": "ok", "Check": ok}).status_code == 200
    dead = {"TCP": f"127.0.0.1:{closed_port()}", "Interval": timing.interval, "Status": "passing"}
    assert agent.register({"Name": service_name, "ID": "dead", "Check": dead}).status_code == 200
    wait_for(lambda: agent.status("service:ok") == "passing", timing.deadline, "tcp connect")
    wait_for(lambda: agent.status("service:dead") == "critical", timing.deadline, "tcp refused")
    check = agent.agent_check("service:ok")
    assert (
        check is not None
        and check["Output"] == f"TCP connect 127.0.0.1:{health_target.port}: Success"
    )


# --------------------------------------------------------------------------------------
# §8.12: blocking queries


def test_blocking_query_waits_when_idle(agent: Agent, service_name: str) -> None:
    """§8.12: same index and wait=1s → answers after 1 s ≤ t < 1 s + 1/16 s + slack."""
    assert agent.register({"Name": service_name}).status_code == 200
    index = agent.index(f"/v1/health/service/{service_name}")
    started = time.monotonic()
    response = agent.http.get(
        f"/v1/health/service/{service_name}", params={"index": index, "wait": "1s"}
    )
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.0 + 1 / 16 + 0.3
    assert int(response.headers["X-Consul-Index"]) == index


def test_blocking_query_returns_at_once_on_changed_index(agent: Agent, service_name: str) -> None:
    assert agent.register({"Name": service_name}).status_code == 200
    index = agent.index(f"/v1/health/service/{service_name}")
    assert agent.register({"Name": service_name, "Port": 2}).status_code == 200
    started = time.monotonic()
    response = agent.http.get(
        f"/v1/health/service/{service_name}", params={"index": index, "wait": "10s"}
    )
    assert time.monotonic() - started < 0.5
    assert int(response.headers["X-Consul-Index"]) > index


def test_blocking_query_wakes_within_100ms_of_a_relevant_write(
    consul_url: str,
    agent: Agent,
    service_name: str,
    maybe_standin: AgentStandIn | None,
    make_http: Callable[..., httpx.Client],
) -> None:
    """§8.12."""
    sid = service_name
    assert agent.register(ttl_service(service_name, sid)).status_code == 200
    index = agent.index(f"/v1/health/service/{service_name}")
    thread, box = in_thread(
        blocking_get(
            make_http(consul_url), f"/v1/health/service/{service_name}", index=index, wait="10s"
        )
    )
    await_blocked(maybe_standin)
    assert agent.ttl("pass", f"service:{sid}").status_code == 200
    written = time.monotonic()
    thread.join(10)
    assert "value" in box, box.get("error")
    assert box["done_at"] - written < 0.1
    assert int(box["value"].headers["X-Consul-Index"]) > index


def test_unrelated_service_write_does_not_wake_a_health_watch(
    consul_url: str,
    agent: Agent,
    service_name: str,
    maybe_standin: AgentStandIn | None,
    make_http: Callable[..., httpx.Client],
) -> None:
    """Health uses a per-service index (§1.7): other services' writes keep it blocked."""
    assert agent.register({"Name": service_name}).status_code == 200
    index = agent.index(f"/v1/health/service/{service_name}")
    thread, box = in_thread(
        blocking_get(
            make_http(consul_url), f"/v1/health/service/{service_name}", index=index, wait="600ms"
        )
    )
    await_blocked(maybe_standin)
    started = time.monotonic()
    assert agent.register({"Name": f"{service_name}-other"}).status_code == 200
    thread.join(10)
    assert box["done_at"] - started >= 0.3
    assert int(box["value"].headers["X-Consul-Index"]) == index


def test_wake_up_without_change_to_the_result(
    consul_url: str,
    agent: Agent,
    service_name: str,
    maybe_standin: AgentStandIn | None,
    make_http: Callable[..., httpx.Client],
) -> None:
    """§1.3: a response is no promise of change — a warning→critical flip of an instance
    that `?passing` filters out still moves the service index."""
    assert agent.register(ttl_service(service_name, "a", Status="passing")).status_code == 200
    assert agent.register(ttl_service(service_name, "b", Status="warning")).status_code == 200
    first = agent.http.get(f"/v1/health/service/{service_name}", params={"passing": ""})
    index = int(first.headers["X-Consul-Index"])
    thread, box = in_thread(
        blocking_get(
            make_http(consul_url),
            f"/v1/health/service/{service_name}",
            passing="",
            index=index,
            wait="10s",
        )
    )
    await_blocked(maybe_standin)
    assert agent.ttl("fail", "service:b").status_code == 200
    thread.join(10)
    response: httpx.Response = box["value"]
    assert int(response.headers["X-Consul-Index"]) > index
    assert response.json() == first.json()


def test_missing_kv_key_wakes_on_other_keys(
    consul_url: str,
    agent: Agent,
    maybe_standin: AgentStandIn | None,
    make_http: Callable[..., httpx.Client],
) -> None:
    """A missing key reports the whole KV table index, so any KV write moves it."""
    key = agent.kv_prefix + "missing"
    index = agent.index(f"/v1/kv/{key}")
    thread, box = in_thread(
        blocking_get(make_http(consul_url), f"/v1/kv/{key}", index=index, wait="3s")
    )
    await_blocked(maybe_standin)
    assert agent.http.put(f"/v1/kv/{agent.kv_prefix}other", content=b"x").json() is True
    written = time.monotonic()
    thread.join(10)
    response: httpx.Response = box["value"]
    assert response.status_code == 404
    assert int(response.headers["X-Consul-Index"]) > index
    if maybe_standin is not None:
        assert box["done_at"] - written < 0.5


def test_existing_kv_key_reports_its_modify_index(
    consul_url: str,
    agent: Agent,
    maybe_standin: AgentStandIn | None,
    make_http: Callable[..., httpx.Client],
) -> None:
    key = agent.kv_prefix + "watched"
    assert agent.http.put(f"/v1/kv/{key}", content=b"1").json() is True
    entry = agent.http.get(f"/v1/kv/{key}")
    index = int(entry.headers["X-Consul-Index"])
    assert index == entry.json()[0]["ModifyIndex"]
    thread, box = in_thread(
        blocking_get(make_http(consul_url), f"/v1/kv/{key}", index=index, wait="500ms")
    )
    await_blocked(maybe_standin)
    started = time.monotonic()
    assert agent.http.put(f"/v1/kv/{agent.kv_prefix}unrelated", content=b"x").json() is True
    thread.join(10)
    assert box["done_at"] - started >= 0.2
    assert int(box["value"].headers["X-Consul-Index"]) == index


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"index": "1", "wait": "abc"}, "Invalid wait time"),
        ({"index": "1", "wait": "10"}, "Invalid wait time"),
        (
            {"stale": "", "consistent": ""},
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        ({"index": "x"}, "Invalid index"),
    ],
)
def test_blocking_parameter_errors(agent: Agent, params: dict[str, str], text: str) -> None:
    """§8.12."""
    response = agent.http.get("/v1/catalog/services", params=params)
    assert (response.status_code, response.text) == (400, text)


def test_wait_is_capped_at_max_query_time(
    make_standin: Callable[..., AgentStandIn], make_http: Callable[..., httpx.Client]
) -> None:
    http = make_http(make_standin(max_query_time=0.3).url)
    index = int(http.get("/v1/catalog/services").headers["X-Consul-Index"])
    started = time.monotonic()
    http.get("/v1/catalog/services", params={"index": index, "wait": "10m"})
    assert 0.3 <= time.monotonic() - started < 0.3 + 0.3 / 16 + 0.3


def test_default_wait_applies_without_wait(
    make_standin: Callable[..., AgentStandIn], make_http: Callable[..., httpx.Client]
) -> None:
    http = make_http(make_standin(default_query_time=0.3).url)
    index = int(http.get("/v1/catalog/services").headers["X-Consul-Index"])
    started = time.monotonic()
    http.get("/v1/catalog/services", params={"index": index})
    assert 0.3 <= time.monotonic() - started < 0.3 + 0.3 / 16 + 0.3


def test_python_consul2_index_zero_does_not_block(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    """§7.9: index=0 is "no index", so wait is not even sent."""
    started = time.monotonic()
    consul_client.health.service(service_name, index=0, wait="5s")
    assert time.monotonic() - started < 1.0


def test_python_consul2_blocking_watch(
    consul_client: consul.Consul,
    agent: Agent,
    service_name: str,
    maybe_standin: AgentStandIn | None,
) -> None:
    index, _ = consul_client.health.service(service_name)
    thread, box = in_thread(
        lambda: consul_client.health.service(service_name, index=index, wait="10s")
    )
    await_blocked(maybe_standin)
    assert agent.register({"Name": service_name}).status_code == 200
    thread.join(10)
    new_index, entries = box["value"]
    assert int(new_index) > int(index)
    assert [e["Service"]["ID"] for e in entries] == [service_name]


# --------------------------------------------------------------------------------------
# §8.13: indexes


def test_index_is_never_zero(standin: AgentStandIn, consul_http: httpx.Client) -> None:
    """§8.13: a fresh agent answers index 1 (0 is rewritten), never 0."""
    for path in ("/v1/kv/nothing", "/v1/health/service/nothing", "/v1/catalog/services"):
        assert consul_http.get(path).headers["X-Consul-Index"] == "1", path


def test_index_is_never_zero_on_any_agent(agent: Agent) -> None:
    for path in ("/v1/kv/nothing-" + uuid.uuid4().hex, "/v1/catalog/services"):
        assert agent.index(path) >= 1


def test_indexes_are_monotonic_across_writes(agent: Agent) -> None:
    """§8.13."""
    seen = []
    for n in range(5):
        key = f"{agent.kv_prefix}k{n}"
        assert agent.http.put(f"/v1/kv/{key}", content=b"v").json() is True
        seen.append(agent.http.get(f"/v1/kv/{key}").json()[0]["ModifyIndex"])
    assert seen == sorted(seen) and len(set(seen)) == 5


def test_reset_makes_the_index_go_backwards(
    standin: AgentStandIn, agent: Agent, consul_client: consul.Consul, service_name: str
) -> None:
    """§8.13: the reset hook models an agent restart; clients must compare as ints and
    restart from index 0 when the index went down (§1.5)."""
    for n in range(11):
        assert agent.http.put(f"/v1/kv/k{n}", content=b"v").json() is True
    before, _ = consul_client.kv.get("k10")
    assert int(before) >= 10
    assert agent.http.post("/_standin/reset").status_code == 200
    after, value = consul_client.kv.get("k10")
    assert value is None
    assert int(after) == 1 < int(before)


def test_python_consul2_indexes_must_be_compared_as_ints(
    standin: AgentStandIn, consul_client: consul.Consul
) -> None:
    """§7.9: the index is the header string; '10' < '9' although the index went up."""
    index = "1"
    while int(index) < 9:
        assert consul_client.kv.put("k", b"v") is True
        index, _ = consul_client.kv.get("k")
    assert consul_client.kv.put("k", b"w") is True
    newer, _ = consul_client.kv.get("k")
    assert int(newer) > int(index)
    assert newer < index, "a string comparison would see the index go backwards"


def test_blocking_with_an_index_from_before_a_reset_times_out(
    standin: AgentStandIn, agent: Agent
) -> None:
    """§1.5: a client holding N larger than the new index blocks until `wait` expires."""
    for n in range(3):
        assert agent.http.put(f"/v1/kv/k{n}", content=b"v").json() is True
    old = agent.index("/v1/kv/k2")
    standin.reset()
    started = time.monotonic()
    response = agent.http.get("/v1/kv/k2", params={"index": old, "wait": "300ms"})
    assert time.monotonic() - started >= 0.3
    assert int(response.headers["X-Consul-Index"]) < old


def test_force_index_hook(standin: AgentStandIn, agent: Agent, service_name: str) -> None:
    for n in range(5):
        assert agent.register({"Name": service_name, "Port": n}).status_code == 200
    high = agent.index(f"/v1/health/service/{service_name}")
    response = agent.http.post("/_standin/index", params={"set": "2"})
    assert response.status_code == 200
    assert agent.index(f"/v1/health/service/{service_name}") == 2 < high
    assert agent.register({"Name": service_name, "Port": 99}).status_code == 200
    assert agent.index(f"/v1/health/service/{service_name}") == 3


def test_tombstone_reaping_lowers_a_listing_index(standin: AgentStandIn, agent: Agent) -> None:
    """§1.5: removing the highest-index item of a listing makes its index go back."""
    assert agent.http.put("/v1/kv/p/a", content=b"1").json() is True
    assert agent.http.put("/v1/kv/p/b", content=b"2").json() is True
    assert agent.http.delete("/v1/kv/p/b").json() is True
    with_tombstone = agent.index("/v1/kv/p/", recurse="")
    standin.reap_tombstones()
    assert agent.index("/v1/kv/p/", recurse="") < with_tombstone


# --------------------------------------------------------------------------------------
# §8.14: KV


def test_kv_missing_key_is_404_with_index(agent: Agent, consul_client: consul.Consul) -> None:
    """§8.14; python-consul2 turns the 404 into (index, None)."""
    key = agent.kv_prefix + "absent"
    response = agent.http.get(f"/v1/kv/{key}")
    assert response.status_code == 404
    assert response.content == b""
    assert int(response.headers["X-Consul-Index"]) >= 1
    index, value = consul_client.kv.get(key)
    assert value is None and int(index) >= 1


def test_kv_put_get_round_trips_arbitrary_bytes(agent: Agent, consul_client: consul.Consul) -> None:
    key = agent.kv_prefix + "bytes"
    payload = bytes(range(256))
    response = agent.http.put(f"/v1/kv/{key}", content=payload, params={"flags": "42"})
    assert (response.status_code, response.text) == (200, "true")
    assert response.headers["Content-Type"] == "application/json"
    [entry] = agent.http.get(f"/v1/kv/{key}").json()
    assert set(entry) >= {"LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"}
    assert (entry["Key"], entry["Flags"], entry["LockIndex"]) == (key, 42, 0)
    assert base64.b64decode(entry["Value"]) == payload
    _, decoded = consul_client.kv.get(key)
    assert decoded["Value"] == payload


def test_kv_empty_value_is_null(agent: Agent, consul_client: consul.Consul) -> None:
    key = agent.kv_prefix + "empty"
    assert consul_client.kv.put(key, None) is True
    assert agent.http.get(f"/v1/kv/{key}").json()[0]["Value"] is None
    assert consul_client.kv.get(key)[1]["Value"] is None


def test_kv_raw(agent: Agent) -> None:
    key = agent.kv_prefix + "raw"
    assert agent.http.put(f"/v1/kv/{key}", content=b'{"load":0.42}').json() is True
    response = agent.http.get(f"/v1/kv/{key}", params={"raw": ""})
    assert response.content == b'{"load":0.42}'
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_kv_cas_semantics(agent: Agent, consul_client: consul.Consul) -> None:
    """§8.14: cas=0 creates only; cas=ModifyIndex updates only that version."""
    key = agent.kv_prefix + "cas"
    assert consul_client.kv.put(key, b"1", cas=0) is True
    assert consul_client.kv.put(key, b"2", cas=0) is False
    _, entry = consul_client.kv.get(key)
    first = entry["ModifyIndex"]
    assert consul_client.kv.put(key, b"2", cas=first) is True
    assert consul_client.kv.put(key, b"3", cas=first) is False, "stale cas"
    _, entry = consul_client.kv.get(key)
    assert (entry["Value"], entry["CreateIndex"]) == (b"2", first)
    assert entry["ModifyIndex"] > first
    raw = agent.http.put(f"/v1/kv/{key}", content=b"4", params={"cas": str(first)})
    assert (raw.status_code, raw.text) == (200, "false")


def test_kv_delete_cas(agent: Agent, consul_client: consul.Consul) -> None:
    key = agent.kv_prefix + "del"
    assert consul_client.kv.put(key, b"v") is True
    _, entry = consul_client.kv.get(key)
    assert consul_client.kv.delete(key, cas=0) is False, "cas=0 never deletes"
    assert consul_client.kv.delete(key, cas=entry["ModifyIndex"] + 1000) is False
    assert consul_client.kv.delete(key, cas=entry["ModifyIndex"]) is True
    assert consul_client.kv.get(key)[1] is None
    assert consul_client.kv.delete(key) is True, "deleting a missing key is true"


def test_kv_recurse_and_keys_listings(agent: Agent, consul_client: consul.Consul) -> None:
    p = agent.kv_prefix
    for key in ("servers/app-1/load", "servers/app-2/load", "servers/app-2/meta", "top"):
        assert consul_client.kv.put(p + key, key.encode()) is True
    _, entries = consul_client.kv.get(p + "servers/", recurse=True)
    assert [e["Key"] for e in entries] == [
        p + "servers/app-1/load",
        p + "servers/app-2/load",
        p + "servers/app-2/meta",
    ]
    assert entries[0]["Value"] == b"servers/app-1/load"
    _, keys = consul_client.kv.get(p, keys=True)
    assert keys == [
        p + k for k in ("servers/app-1/load", "servers/app-2/load", "servers/app-2/meta", "top")
    ]
    _, grouped = consul_client.kv.get(p, keys=True, separator="/")
    assert grouped == [p + "servers/", p + "top"]
    assert agent.http.get(f"/v1/kv/{p}nothing/", params={"recurse": ""}).status_code == 404
    assert agent.http.get(f"/v1/kv/{p}nothing/", params={"keys": ""}).status_code == 404


def test_kv_keys_on_empty_root_is_an_empty_list(standin: AgentStandIn, agent: Agent) -> None:
    response = agent.http.get("/v1/kv/", params={"keys": ""})
    assert (response.status_code, response.json()) == (200, [])


def test_kv_delete_recurse(agent: Agent, consul_client: consul.Consul) -> None:
    p = agent.kv_prefix
    for key in ("a/1", "a/2", "b"):
        assert consul_client.kv.put(p + key, b"v") is True
    assert consul_client.kv.delete(p + "a/", recurse=True) is True
    _, keys = consul_client.kv.get(p, keys=True)
    assert keys == [p + "b"]
    both = agent.http.delete(f"/v1/kv/{p}", params={"recurse": "", "cas": "1"})
    assert both.status_code == 400


def test_kv_missing_key_name(agent: Agent) -> None:
    assert (agent.http.get("/v1/kv/").status_code, agent.http.get("/v1/kv/").text) == (
        400,
        "Missing key name",
    )
    assert agent.http.put("/v1/kv/", content=b"v").status_code == 400


def test_kv_value_size_limit(agent: Agent) -> None:
    response = agent.http.put(f"/v1/kv/{agent.kv_prefix}big", content=b"x" * (512 * 1024 + 1))
    assert response.status_code == 413


# --------------------------------------------------------------------------------------
# §8.17 and other reads


def test_catalog_services_lists_consul_and_tag_union(agent: Agent, service_name: str) -> None:
    """§8.17."""
    assert (
        agent.register({"Name": service_name, "ID": "a", "Tags": ["v1", "zone-a"]}).status_code
        == 200
    )
    assert (
        agent.register({"Name": service_name, "ID": "b", "Tags": ["v1", "zone-b"]}).status_code
        == 200
    )
    services = agent.http.get("/v1/catalog/services").json()
    assert "consul" in services
    assert sorted(services[service_name]) == ["v1", "zone-a", "zone-b"]


def test_catalog_service_entries(agent: Agent, service_name: str) -> None:
    body = {"Name": service_name, "ID": "a", "Tags": ["v1"], "Address": "10.0.0.7", "Port": 8080}
    assert agent.register(body).status_code == 200
    assert agent.register({"Name": service_name, "ID": "b"}).status_code == 200
    response = agent.http.get(f"/v1/catalog/service/{service_name}", params={"tag": "v1"})
    [entry] = response.json()
    assert (entry["ServiceID"], entry["ServiceAddress"], entry["ServicePort"]) == (
        "a",
        "10.0.0.7",
        8080,
    )
    assert entry["ServiceTags"] == ["v1"]
    assert {"Node", "Address", "Datacenter", "CreateIndex", "ModifyIndex"} <= set(entry)


def test_health_tag_filter_requires_every_tag(agent: Agent, service_name: str) -> None:
    assert (
        agent.register({"Name": service_name, "ID": "a", "Tags": ["v1", "zone-a"]}).status_code
        == 200
    )
    assert agent.register({"Name": service_name, "ID": "b", "Tags": ["v1"]}).status_code == 200
    assert agent.ids(service_name, tag="v1") == {"a", "b"}
    assert agent.ids(service_name, tag=["v1", "zone-a"]) == {"a"}


def test_unknown_service_health_is_an_empty_list(agent: Agent) -> None:
    response = agent.http.get(f"/v1/health/service/nothing-{uuid.uuid4().hex}")
    assert (response.status_code, response.json()) == (200, [])


def test_read_meta_headers(agent: Agent) -> None:
    """§0: meta headers on catalog/health/KV reads, consistency flags accepted."""
    for params, consistency in [
        ({}, "leader"),
        ({"stale": ""}, "stale"),
        ({"consistent": ""}, "consistent"),
    ]:
        response = agent.http.get("/v1/catalog/services", params=params)
        assert response.status_code == 200
        assert response.headers["X-Consul-Knownleader"] == "true"
        assert response.headers["X-Consul-Lastcontact"].isdigit()
        assert response.headers["X-Consul-Effective-Consistency"] == consistency
        assert int(response.headers["X-Consul-Index"]) >= 1
    assert agent.http.get("/v1/catalog/services").headers["X-Consul-Default-Acl-Policy"] in (
        "allow",
        "deny",
    )


def test_health_checks_and_state(agent: Agent, service_name: str) -> None:
    assert agent.register(ttl_service(service_name, service_name)).status_code == 200
    checks = agent.http.get(f"/v1/health/checks/{service_name}").json()
    assert [c["CheckID"] for c in checks] == [f"service:{service_name}"]
    critical = agent.http.get("/v1/health/state/critical").json()
    assert f"service:{service_name}" in {c["CheckID"] for c in critical}
    everything = agent.http.get("/v1/health/state/any").json()
    assert "serfHealth" in {c["CheckID"] for c in everything}


def test_agent_services_and_service(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    assert agent.register({"Name": service_name, "ID": "i-1", "Port": 7}).status_code == 200
    services = consul_client.agent.services()
    assert services["i-1"]["Service"] == service_name
    assert (services["i-1"]["Tags"], services["i-1"]["Meta"]) == ([], {})
    one = agent.http.get("/v1/agent/service/i-1")
    assert one.json()["Port"] == 7
    assert one.headers["X-Consul-Contenthash"] == one.json()["ContentHash"]
    missing = agent.http.get("/v1/agent/service/nope")
    assert (missing.status_code, missing.text) == (404, "unknown service ID: nope")


def test_agent_service_hash_blocking(agent: Agent, service_name: str) -> None:
    assert agent.register({"Name": service_name, "ID": "h-1"}).status_code == 200
    digest = agent.http.get("/v1/agent/service/h-1").json()["ContentHash"]
    started = time.monotonic()
    response = agent.http.get("/v1/agent/service/h-1", params={"hash": digest, "wait": "300ms"})
    assert time.monotonic() - started >= 0.3
    assert response.json()["ContentHash"] == digest


def test_agent_checks_self_and_leader(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    assert agent.register(ttl_service(service_name, service_name)).status_code == 200
    assert f"service:{service_name}" in consul_client.agent.checks()
    assert consul_client.agent.self()["Config"]["Datacenter"]
    assert ":" in consul_client.status.leader()


def test_agent_health_by_id(agent: Agent, service_name: str) -> None:
    assert (
        agent.register(ttl_service(service_name, service_name, Status="warning")).status_code == 200
    )
    response = agent.http.get(f"/v1/agent/health/service/id/{service_name}")
    assert (response.status_code, response.json()["AggregatedStatus"]) == (429, "warning")
    assert agent.http.get("/v1/agent/health/service/id/nope").status_code == 404


def test_stand_alone_check_registration(
    consul_client: consul.Consul, agent: Agent, service_name: str
) -> None:
    assert agent.register({"Name": service_name}).status_code == 200
    assert consul_client.agent.check.register(
        "heartbeat", check=consul.Check.ttl("30s"), check_id="hb", service_id=service_name
    )
    check = agent.agent_check("hb")
    assert check is not None and (check["ServiceID"], check["Status"]) == (service_name, "critical")
    missing = agent.http.put(
        "/v1/agent/check/register", json={"Name": "x", "TTL": "1s", "ServiceID": "nope"}
    )
    assert (missing.status_code, missing.text) == (404, 'ServiceID "nope" does not exist')
    assert consul_client.agent.check.deregister("hb") is True
    assert agent.agent_check("hb") is None


def test_wrong_method_and_unknown_path(agent: Agent) -> None:
    wrong = agent.http.post("/v1/agent/service/register", json={})
    assert wrong.status_code == 405
    assert agent.http.get("/v1/agent/service/register").status_code == 405
    assert agent.http.get("/v1/nope").status_code == 404


def test_filter_is_refused_by_the_stand_in(standin: AgentStandIn, agent: Agent) -> None:
    response = agent.http.get("/v1/health/service/x", params={"filter": 'Service.Meta.zone == "a"'})
    assert response.status_code == 400


# --------------------------------------------------------------------------------------
# §8.15: ACL mode


TOKEN = "0b6e2f1c-5e3b-4b1e-9f0a-6d1f3c2a9e77"


@pytest.fixture
def acl_standin(make_standin: Callable[..., AgentStandIn]) -> AgentStandIn:
    return make_standin(acl_tokens=frozenset({TOKEN}))


def test_acl_write_without_token_is_permission_denied(
    acl_standin: AgentStandIn,
    make_http: Callable[..., httpx.Client],
    make_consul_client: Callable[..., consul.Consul],
) -> None:
    """§8.15."""
    anonymous = make_http(acl_standin.url)
    response = anonymous.put("/v1/agent/service/register", json={"Name": "app"})
    assert response.status_code == 403
    assert response.text.startswith("Permission denied")
    assert "service:write" in response.text
    assert anonymous.put("/v1/kv/k", content=b"v").status_code == 403
    with pytest.raises(consul.base.ACLPermissionDenied, match="Permission denied"):
        make_consul_client(acl_standin.url).agent.service.register("app")


def test_acl_unknown_token_is_acl_not_found(
    acl_standin: AgentStandIn, make_http: Callable[..., httpx.Client]
) -> None:
    stranger = make_http(acl_standin.url, headers={"X-Consul-Token": "not-a-token"})
    for method, path in [
        ("PUT", "/v1/kv/k"),
        ("GET", "/v1/health/service/app"),
        ("GET", "/v1/kv/k"),
    ]:
        response = stranger.request(method, path)
        assert (response.status_code, response.text) == (403, "ACL not found"), path


def test_acl_reads_without_token_are_filtered(
    acl_standin: AgentStandIn, make_http: Callable[..., httpx.Client]
) -> None:
    """§8.15: filtered, not 403."""
    admin = make_http(acl_standin.url, headers={"X-Consul-Token": TOKEN})
    assert admin.put("/v1/agent/service/register", json={"Name": "app"}).status_code == 200
    assert admin.put("/v1/kv/shared/k", content=b"v").json() is True
    anonymous = make_http(acl_standin.url)
    assert anonymous.get("/v1/health/service/app").json() == []
    assert anonymous.get("/v1/catalog/services").json() == {}
    assert anonymous.get("/v1/agent/services").json() == {}
    assert anonymous.get("/v1/kv/", params={"keys": ""}).json() == []
    assert anonymous.get("/v1/kv/shared/", params={"recurse": ""}).status_code == 404
    policy = anonymous.get("/v1/catalog/services").headers["X-Consul-Default-Acl-Policy"]
    assert policy == "deny"


@pytest.mark.parametrize("how", ["header", "query", "bearer"])
def test_acl_management_token_is_accepted_three_ways(
    acl_standin: AgentStandIn, make_http: Callable[..., httpx.Client], how: str
) -> None:
    headers = {"header": {"X-Consul-Token": TOKEN}, "bearer": {"Authorization": f"Bearer {TOKEN}"}}
    params = {"token": TOKEN} if how == "query" else {}
    response = make_http(acl_standin.url).put(
        "/v1/agent/service/register", json={"Name": "app"}, headers=headers.get(how), params=params
    )
    assert response.status_code == 200


def test_acl_python_consul2_token_and_env_override(
    acl_standin: AgentStandIn,
    make_consul_client: Callable[..., consul.Consul],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§7.7: CONSUL_HTTP_TOKEN wins over the token= argument."""
    assert make_consul_client(acl_standin.url, token=TOKEN).agent.service.register("app")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
    overridden = make_consul_client(acl_standin.url, token=TOKEN)
    with pytest.raises(consul.base.ACLPermissionDenied, match="ACL not found"):
        overridden.agent.service.register("app")


def test_acl_token_file_for_the_process(
    make_standin_process: Callable[..., StandInProcess],
    make_http: Callable[..., httpx.Client],
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    process = make_standin_process("--acl-token-file", str(token_file))
    http = make_http(process.url)
    assert http.put("/v1/kv/k", content=b"v").status_code == 403
    ok = http.put("/v1/kv/k", content=b"v", headers={"X-Consul-Token": TOKEN})
    assert ok.json() is True


# --------------------------------------------------------------------------------------
# Trouble: pauses, outages, restarts, a dead node


def test_pause_hangs_requests_until_resumed(standin: AgentStandIn, agent: Agent) -> None:
    assert agent.http.post("/_standin/pause").status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        agent.http.get("/v1/catalog/services", timeout=0.2)
    assert agent.http.post("/_standin/resume").status_code == 200
    assert agent.http.get("/v1/catalog/services").status_code == 200


def test_down_and_up_keep_state_and_port(
    standin: AgentStandIn, agent: Agent, make_consul_client: Callable[..., consul.Consul]
) -> None:
    assert agent.register({"Name": "app"}).status_code == 200
    client = make_consul_client(standin.url, timeout=2)
    port = standin.port
    with standin.unreachable():
        with pytest.raises(httpx.ConnectError):
            agent.http.get("/v1/agent/services")
        with pytest.raises(requests.exceptions.ConnectionError):
            client.agent.services()
    assert standin.port == port
    assert "app" in client.agent.services()


def test_down_drops_in_flight_blocking_queries(
    standin: AgentStandIn, make_http: Callable[..., httpx.Client]
) -> None:
    thread, box = in_thread(
        blocking_get(make_http(standin.url), "/v1/catalog/services", index="1", wait="30s")
    )
    await_blocked(standin)
    standin.down()
    thread.join(10)
    standin.up()
    assert isinstance(box.get("error"), httpx.TransportError), box


def test_timed_outage_over_http(standin: AgentStandIn, agent: Agent) -> None:
    # Long enough that the poll below cannot miss the window on a loaded machine.
    assert agent.http.post("/_standin/down", params={"seconds": "2"}).status_code == 200

    def refused() -> bool:
        try:
            agent.http.get("/v1/status/leader", timeout=1)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            # A kept-alive connection sees the close as a disconnect, a new one as a refusal.
            return True
        return False

    wait_for(refused, 2.0, "the listener to close")
    wait_for(lambda: not refused(), 5.0, "the listener to come back")


def test_serf_health_critical_fails_every_service(
    standin: AgentStandIn, agent: Agent, service_name: str
) -> None:
    body = ttl_service(service_name, service_name, Status="passing")
    assert agent.register(body).status_code == 200
    assert agent.http.post("/_standin/serf", params={"status": "critical"}).status_code == 200
    assert agent.ids(service_name, passing="") == set()
    assert agent.ids("consul", passing="") == set()
    assert agent.ids(service_name) == {service_name}
    standin.set_serf_health("passing")
    assert agent.ids(service_name, passing="") == {service_name}


def test_process_restart_loses_state_and_index(
    make_standin_process: Callable[..., StandInProcess],
    make_consul_client: Callable[..., consul.Consul],
) -> None:
    """A crashed `-dev` agent: connections refused, then an empty agent at index 1; a TTL
    pass then answers 500, the app server's cue to re-register (§2.5)."""
    process = make_standin_process()
    client = make_consul_client(process.url, timeout=2)
    assert client.agent.service.register("app", check=consul.Check.ttl("30s"))
    for n in range(5):
        assert client.kv.put(f"k{n}", b"v") is True
    before, _ = client.catalog.services()
    port = process.port
    process.kill()
    with pytest.raises(requests.exceptions.ConnectionError):
        client.catalog.services()
    assert process.start(port) == port
    after, services = client.catalog.services()
    assert int(after) < int(before)
    assert services == {"consul": []}
    with pytest.raises(consul.base.ConsulException, match="does not have associated TTL"):
        client.agent.check.ttl_pass("service:app")


def test_frozen_process_accepts_but_never_answers(
    make_standin_process: Callable[..., StandInProcess], make_http: Callable[..., httpx.Client]
) -> None:
    process = make_standin_process()
    http = make_http(process.url)
    process.freeze()
    try:
        with pytest.raises(httpx.ReadTimeout):
            http.get("/v1/status/leader", timeout=0.3)
    finally:
        process.thaw()
    assert http.get("/v1/status/leader", timeout=5).status_code == 200


def test_control_interface_describes_state(standin: AgentStandIn, agent: Agent) -> None:
    assert agent.register({"Name": "app"}).status_code == 200
    state = agent.http.get("/_standin/state").json()
    assert state["services"] == ["app"]
    assert state["index"] >= 2
    assert agent.http.get("/_standin/nope").status_code == 404
