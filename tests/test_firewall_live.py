"""Issue 7 end to end: the ipfilter and ratelimit plugins on a referral and an app server.

Real processes on loopback with TLS (``Deployment``), the plugins autoloaded
from their own installed distributions and configured by ``[plugins.*]``
tables. Loopback has a whole /8, so a client socket bound to 127.0.0.2 or
127.0.0.3 is a second or third client address as the servers see it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.metadata
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from affinity.builtin.embedded.statefile import State, StateFile
from affinity.plugin.manager import PluginManager
from affinity.testing import Deployment, free_port, wait_until
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing, generate_keyfile
from affinity.web.tls import client_context

ROOT = Path(__file__).resolve().parent.parent
PEER = "127.0.0.1"  # the flooding / spoofing client, and the infrastructure (health, registration)
OTHER = "127.0.0.2"  # a well-behaved second client
DENIED = "127.0.0.3"  # an address the file's rules deny
SCRAPER = "127.0.0.4"  # reads metrics, so that no other client's allowance is spent on it
HEALTH = "/.well-known/affinity/health"
METRICS = "/.well-known/affinity/metrics"
SPOOFING = ("x-forwarded-for", "forwarded", "x-real-ip")


def client_from(d: Deployment, address: str, **kwargs: object) -> httpx.Client:
    """A client whose connections leave from ``address``: another client, as servers see it."""
    transport = httpx.HTTPTransport(verify=client_context(d.ca), local_address=address)
    return httpx.Client(transport=transport, timeout=5.0, **kwargs)  # type: ignore[arg-type]


def metric(text: str, name: str, /, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition, or None when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def spoofed(i: int) -> dict[str, str]:
    """Forwarding headers naming a new address on every request, as a spoofing client would."""
    fake = f"10.{i // 250 % 250}.{i % 250}.{i % 7 + 1}"
    return {"X-Forwarded-For": fake, "Forwarded": f"for={fake}", "X-Real-IP": fake}


# -- 1. the plugins are distributions of their own, installed and autoloaded ----------------


def test_plugins_are_installed_distributions_and_autoloaded() -> None:
    """Every plugins/*/ is an installed distribution whose entry point the core loads."""
    manager = PluginManager(env={})
    projects = sorted(ROOT.glob("plugins/*/pyproject.toml"))
    assert len(projects) >= 2
    for pyproject in projects:
        project = tomllib.loads(pyproject.read_text())["project"]
        dist = importlib.metadata.distribution(project["name"])
        assert dist.version == project["version"]
        (name, value), *_ = project["entry-points"]["affinity"].items()
        installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == "affinity"}
        assert installed == {name: value}
        assert name in manager.names()
    # The one setup script (.ci/run -> scripts/test -> scripts/setup, and the README's
    # ./scripts/dev and ./scripts/test) installs every plugins/*/ directory.
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()
    assert "./scripts/setup" in (ROOT / "scripts" / "test").read_text()
    assert "for plugin in plugins/*/" in (ROOT / "scripts" / "setup").read_text()


# -- a deployment with both plugins configured, shared by the tests that only read ----------

LIMITS = """
[plugins.ipfilter]
deny = ["127.0.0.3/32", "203.0.113.0/24"]

[plugins.ratelimit]
key = "ip"

[[plugins.ratelimit.limits]]
name = "assign"
prefix = "/v1/assign"
roles = ["referral"]
rate = 20.0
burst = 5

[[plugins.ratelimit.limits]]
name = "app"
roles = ["server"]
rate = 20.0
burst = 5
"""
RATE, BURST = 20.0, 5


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A referral and one app server with the rules above."""
    with Deployment(tmp_path_factory.mktemp("limited"), extra_config=LIMITS) as d:
        d.start_referral()
        d.start_server("s1")
        wait_until(lambda: d.assignable() == {"s1"}, 10, what="s1 assignable")
        yield d


def test_denied_cidr_gets_403_on_referral_and_app_server(limited: Deployment) -> None:
    d = limited
    s1 = d.server_urls["s1"]
    with client_from(d, DENIED) as denied, client_from(d, OTHER) as other:
        for url in (d.referral_url + "/v1/assign", d.referral_url + "/healthz", s1 + "/",
                    s1 + HEALTH, s1 + METRICS, s1 + "/no/such/path"):  # fmt: skip
            r = denied.get(url)
            assert r.status_code == 403, url
            assert r.json() == {"error": "forbidden", "detail": "address 127.0.0.3 is not allowed"}
            assert r.headers["content-type"] == "application/json"
            assert r.headers["x-content-type-options"] == "nosniff"
            # Naming another address in forwarding headers does not help: no proxy is trusted.
            assert denied.get(url, headers=spoofed(1)).status_code == 403
        assert denied.get(s1 + "/").headers["affinity-server"] == "s1"
        assert other.get(d.referral_url + "/v1/assign").status_code == 200
        assert other.get(s1 + "/").status_code == 200
    with client_from(d, SCRAPER) as c:
        # Without a trusted proxy, claiming a denied address in headers changes nothing either.
        claim = "203.0.113.9"
        headers = {"X-Forwarded-For": claim, "Forwarded": f"for={claim}", "X-Real-IP": claim}
        for url in (d.referral_url + "/v1/assign", s1 + "/"):
            assert c.get(url, headers=headers).status_code == 200
        on_referral = c.get(d.referral_url + "/metrics").text
        on_server = c.get(s1 + METRICS).text
    assert (metric(on_referral, "affinity_plugin_events_total", rule="ipfilter.deny[0]") or 0) >= 4
    assert (metric(on_server, "affinity_plugin_events_total", rule="ipfilter.deny[0]") or 0) >= 8
    assert metric(on_server, "affinity_app_draining") == 0.0


@dataclass
class Stream:
    """Requests from one address at a steady rate, spread over a few threads."""

    address: str
    rate: float
    threads: int = 1
    headers: Callable[[int], Mapping[str, str]] | None = None
    answers: list[tuple[float, float, httpx.Response]] = field(default_factory=list)
    """(sent, answered, answer), in seconds from the start of the schedule."""


def run_streams(
    d: Deployment, url: str, warm_url: str, streams: list[Stream], seconds: float
) -> None:
    """Send every stream's requests on schedule for ``seconds``; answers keep their times.

    Each thread opens its connection on ``warm_url`` (a path the limiter exempts)
    first, so the schedule starts with connections ready and a full allowance.
    """
    lock = threading.Lock()
    errors: list[BaseException] = []
    plans = []
    for stream in streams:
        for i in range(stream.threads):
            client = client_from(d, stream.address)
            assert client.get(warm_url).status_code == 200
            plans.append((stream, i, client))
    start = time.monotonic() + 0.2

    def run(stream: Stream, first: int, client: httpx.Client) -> None:
        try:
            for k in range(first, int(stream.rate * seconds), stream.threads):
                delay = start + k / stream.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the schedule, not waiting for an event
                sent = time.monotonic() - start
                headers = stream.headers(k) if stream.headers else None
                answer = client.get(url, headers=headers)
                answered = time.monotonic() - start
                with lock:
                    stream.answers.append((sent, answered, answer))
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=plan) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)


@pytest.mark.parametrize("tier", ["referral", "server"])
def test_flood_is_held_to_the_limit_and_a_second_address_is_untouched(
    limited: Deployment, tier: str, record_property: Callable[[str, object], None]
) -> None:
    """5x the limit from one peer, rotating forwarding headers, for a 10 s window (L2, L3, L4)."""
    d, window = limited, 10.0
    if tier == "referral":
        url, warm, name = d.referral_url + "/v1/assign", d.referral_url + "/healthz", "assign"
    else:
        url, warm, name = d.server_urls["s1"] + "/", d.server_urls["s1"] + HEALTH, "app"
    flood = Stream(PEER, rate=5 * RATE, threads=4, headers=spoofed)
    calm = Stream(OTHER, rate=RATE / 4)
    run_streams(d, url, warm, [flood, calm], window)

    sent_in_window = [(sent, answered, r) for sent, answered, r in flood.answers if sent < window]
    in_window = [r for _, _, r in sent_in_window]
    admitted = sum(r.status_code == 200 for r in in_window)
    # The limiter decided each request between its sending and its answer: over that span
    # the bucket held its burst and refilled at RATE, and no more can have been admitted,
    # however slowly a loaded machine ran the schedule.
    span = max(answered for _, answered, _ in sent_in_window) - min(s for s, _, _ in sent_in_window)
    most = BURST + RATE * span
    record_property("flood", f"{len(in_window)} sent, {admitted} admitted, at most {most:.0f}")
    assert len(in_window) > most + 1  # it really was a flood: more than could pass
    assert admitted <= most + 1, (admitted, most)
    # And it admits what it may: the whole burst, and at least half the refill of the
    # window (a flood that stalls on a busy machine wastes refill, so not all of it).
    assert admitted >= BURST + RATE * window / 2, (admitted, most)
    refused = [r for r in in_window if r.status_code != 200]
    assert refused and {r.status_code for r in refused} == {429}
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-policy"] == f'"{name}";q=20;w=1'
        assert r.headers["ratelimit"].startswith(f'"{name}";r=0;t=')
        assert r.json()["error"] == "rate_limited"
    assert [r.status_code for _, _, r in calm.answers] == [200] * int(calm.rate * window)
    where = d.referral_url + "/metrics" if tier == "referral" else d.server_urls["s1"] + METRICS
    with client_from(d, SCRAPER) as c:
        text = c.get(where).text
    assert (metric(text, "affinity_plugin_events_total", rule=f"ratelimit.{name}") or 0) >= len(
        refused
    )


# -- 1. trusted proxies: headers count only when configured ------------------------------------


def test_trusted_proxy_settings_take_the_client_address_from_headers(tmp_path: Path) -> None:
    """proxies_count + real_ip_header on the referral; a forwarded secret on the app server."""
    secret = "s3cret-between-the-proxy-and-the-server"
    d = Deployment(
        tmp_path / "proxied",
        referral='proxies_count = 1\nreal_ip_header = "x-real-ip"\n',
        server='forwarded_secret_file = "forwarded-secret"\n',
        extra_config='[plugins.ipfilter]\ndeny = ["203.0.113.0/24", "2001:db8::/32"]\n',
    )
    (d.dir / "forwarded-secret").write_text(secret + "\n")
    with d:
        d.start_referral()
        d.start_server("s1")
        wait_until(lambda: d.assignable() == {"s1"}, 10, what="s1 assignable")
        assign, s1 = d.referral_url + "/v1/assign", d.server_urls["s1"] + "/"
        with d.client() as c:
            # Referral: the last X-Forwarded-For entry (the one our proxy appended), or X-Real-IP.
            assert c.get(assign).status_code == 200
            assert c.get(assign, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
            spoof = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
            assert c.get(assign, headers=spoof).status_code == 200
            assert c.get(assign, headers={"X-Real-IP": "203.0.113.9"}).status_code == 403
            # App server: only a Forwarded element carrying the shared secret is believed.
            signed = {"Forwarded": f"for=203.0.113.9;secret={secret}"}
            assert c.get(s1, headers=signed).status_code == 403
            unsigned = {"Forwarded": "for=203.0.113.9;secret=guess"}
            assert c.get(s1, headers=unsigned).status_code == 200
            assert c.get(s1, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 200
            # An IPv6 client named by the proxy is matched as an address, not as text.
            v6 = {"Forwarded": f'for="[2001:db8::1]";secret={secret}'}
            assert c.get(s1, headers=v6).status_code == 403
            v6 = {"Forwarded": f'for="[2001:db9::1]";secret={secret}'}
            assert c.get(s1, headers=v6).status_code == 200


# -- token-required mode ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_token_required_mode_refuses_tokenless_and_forged_requests(tmp_path: Path) -> None:
    """Without a valid referral token nothing reaches the app: a flood must pass the referral."""
    with Deployment(tmp_path / "strict", server="require_token = true\n") as d:
        d.start_referral()
        d.start_server("s1")
        wait_until(lambda: d.assignable() == {"s1"}, 10, what="s1 assignable")
        s1 = d.server_urls["s1"] + "/"
        with d.client() as c:
            token = c.get(d.referral_url + "/v1/assign").json()["token"]
            header, payload, _ = token.split(".")
            claims = orjson.loads(_unb64(payload))
            other_keys = tmp_path / "other-keys.json"
            generate_keyfile(other_keys, "HS256", False)
            stranger = TokenIssuer(KeyRing.load(other_keys))
            wrong_secret = hmac.new(b"guessed", f"{header}.{payload}".encode(), hashlib.sha256)
            edited = _b64(orjson.dumps({**claims, "cid": "someone-else"}))
            none = _b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
            forged = {
                "other key ring": stranger.issue("s1", claims["cid"], "web")[0],
                "wrong secret, real kid": f"{header}.{payload}.{_b64(wrong_secret.digest())}",
                "claims edited": f"{header}.{edited}.{token.split('.')[2]}",
                "alg none": f"{none}.{payload}.",
            }
            r = c.get(s1)
            assert (r.status_code, r.json()["error"]) == (401, "token_required")
            for what, bad in forged.items():
                r = c.get(s1, headers={"Affinity-Token": bad})
                assert (r.status_code, r.json()["error"]) == (401, "invalid_token"), what
                r = c.get(s1, headers={"Cookie": f"affinity={bad}"})
                assert r.status_code == 401, what
            assert c.get(s1, headers={"Affinity-Token": token}).status_code == 200
            assert c.get(d.server_urls["s1"] + HEALTH).status_code == 200  # checks need no token


# -- 3. shared rules changed at run time through the admin API -----------------------------------


def _status(client: httpx.Client, url: str) -> int:
    return client.get(url).status_code


def _seconds_until(
    client: httpx.Client, url: str, status: int, start: float, bound: float = 5.0
) -> float:
    """Seconds from ``start`` until ``url`` answers ``status``; fails after ``bound`` seconds."""
    wait_until(lambda: _status(client, url) == status, bound, 0.01, f"{url} answering {status}")
    return time.monotonic() - start


def test_rule_changes_reach_running_referrals_and_app_server_within_a_second(
    deployment: Deployment, record_property: Callable[[str, object], None]
) -> None:
    """Two referral replicas sharing a state file and an app server, plugins installed, no table."""
    d = deployment
    d.start_referral()
    b_port = free_port()
    b_url = f"https://127.0.0.1:{b_port}"
    b = d.start_referral(wait=False, env={"AFFINITY_REFERRAL_LISTEN": f"127.0.0.1:{b_port}"})
    d.wait_http(b_url + "/healthz", b)
    d.start_server("s1")
    wait_until(lambda: d.assignable() == {"s1"}, 10, what="s1 assignable")
    a_assign, b_assign = d.referral_url + "/v1/assign", b_url + "/v1/assign"
    s1 = d.server_urls["s1"] + "/"
    targets = {"referral A": a_assign, "referral B": b_assign, "app server": s1}

    with (
        client_from(d, OTHER) as other,
        client_from(d, SCRAPER) as scraper,
        d.admin() as admin,
        d.client() as c,
    ):
        for url in targets.values():  # referral B checks s1's health on its own, too
            _seconds_until(other, url, 200, time.monotonic(), bound=10.0)

        start = time.monotonic()
        r = admin.put("/v1/settings/ipfilter", json={"deny": ["127.0.0.2/32"]})
        assert r.status_code == 200 and r.json()["version"] == 1
        took = {what: _seconds_until(other, url, 403, start) for what, url in targets.items()}
        assert all(seconds <= 1.0 for seconds in took.values()), took
        record_property("ipfilter change", took)
        assert all(_status(c, url) == 200 for url in targets.values())  # 127.0.0.1 still admitted

        # A bad rule set is refused whole with 400, and version 1 stays in force everywhere.
        r = admin.put("/v1/settings/ipfilter", json={"deny": ["127.0.0.0/32", "10.0.0.1/8"]})
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_settings"
        assert "ipfilter.deny[1]" in r.json()["detail"]
        assert admin.get("/v1/settings/ipfilter").json()["version"] == 1
        assert all(_status(other, url) == 403 for url in targets.values())
        assert all(_status(c, url) == 200 for url in targets.values())

        # Limits change the same way: one request admitted, then 429, on every process.
        start = time.monotonic()
        tight = {"rate": 0.2, "burst": 1}
        limits = [{"name": "assign", "prefix": "/v1/assign", "roles": ["referral"], **tight},
                  {"name": "app", "prefix": "/", "roles": ["server"], **tight}]  # fmt: skip
        r = admin.put("/v1/settings/ratelimit", json={"key": "ip", "limits": limits})
        assert r.status_code == 200
        took = {what: _seconds_until(c, url, 429, start) for what, url in targets.items()}
        assert all(seconds <= 1.0 for seconds in took.values()), took
        record_property("ratelimit change", took)

        # A document that reaches the registry without the admin API's check (as one written
        # straight into Consul KV would) is refused whole where it is applied, and reported.
        def smuggle(state: State) -> None:
            state["settings"]["ipfilter"] = {"version": 9, "value": {"deny": ["nonsense"]}}

        StateFile(d.dir / "state.json").update(smuggle)
        b_metrics = b_url + "/metrics"
        wait_until(
            lambda: (
                metric(
                    scraper.get(b_metrics).text, "affinity_settings_refused_total", name="ipfilter"
                )
                == 1.0
            ),
            5,
            what="referral B refusing the smuggled document",
        )
        assert "refused shared settings 'ipfilter' version 9 whole" in b.output()
        assert all(_status(other, url) == 403 for url in targets.values())

        for url in (d.referral_url + "/metrics", b_metrics, d.server_urls["s1"] + METRICS):
            text = scraper.get(url).text
            assert metric(text, "affinity_settings_version", name="ipfilter") == 1.0, url
            assert metric(text, "affinity_settings_version", name="ratelimit") == 1.0, url
            hits = metric(text, "affinity_plugin_events_total", rule="ipfilter.settings.deny[0]")
            assert (hits or 0) >= 1, url
        a_text = scraper.get(d.referral_url + "/metrics").text
        # Referral A refused two: the bad PUT (400) and the smuggled version 9.
        assert metric(a_text, "affinity_settings_refused_total", name="ipfilter") == 2.0
