"""examples/consul/ run as its README says, on one host: the files as written, the stand-in agent.

Why: an operator copies these files. Each is used unchanged but for where
``/etc/affinity/`` is (a temporary directory); the server id is given as the
template unit gives it (``--id``); what the README puts in environment files
comes from the environment (``AFFINITY_SERVER_URL``, ``AFFINITY_SERVER_LISTEN``,
``AFFINITY_CONSUL_TOKEN``), and so do the two things one host cannot give every
process: the listen address of the referral (not port 443) and the agent's
address (not port 8500, which another agent may hold). The stand-in runs with
ACLs on and its checks trust the private CA, as ``consul.d/consul.hcl`` has the
agent do.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from affinity.cli.main import main
from affinity.process import ChildProcess, stop, wait_answering
from affinity.protocol import DRAIN_PATH, RESUME_PATH
from affinity.testing import HELLO_APP, free_port, wait_until
from affinity.web.certs import make_dev_certs
from affinity.web.tls import client_context
from tests.consul.conftest import FAST_CONFIG, skip_if_real_agent
from tests.consul_agent import AgentStandIn

pytestmark = pytest.mark.consul

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "consul"
ETC = "/etc/affinity/"


class OneHost:
    """``/etc/affinity`` as the README's step 3 makes it, and the processes of step 4."""

    def __init__(self, tmp_path: Path) -> None:
        self.etc = tmp_path / "etc-affinity"
        tls = self.etc / "tls"
        certs = make_dev_certs(tmp_path / "certs", "example.test")
        tls.mkdir(parents=True)
        shutil.copy(certs.cert, tls / "wildcard.pem")
        shutil.copy(certs.key, tls / "wildcard.key")
        shutil.copy(certs.ca, tls / "ca.pem")
        self.ca = tls / "ca.pem"
        assert main(["keys", "generate", "--file", str(self.etc / "keys.json")]) == 0
        self.admin_token = secrets.token_urlsafe(24)
        (self.etc / "admin-token").write_text(self.admin_token + "\n")
        for name in ("referral.toml", "server.toml"):
            text = (EXAMPLES / name).read_text(encoding="utf-8")
            (self.etc / name).write_text(text.replace(ETC, f"{self.etc}/"), encoding="utf-8")
        self.tokens = {"referral": secrets.token_hex(16), "server": secrets.token_hex(16)}
        self.agent = AgentStandIn(
            replace(
                FAST_CONFIG,
                acl_tokens=frozenset(self.tokens.values()),
                check_ca_file=str(self.ca),
                min_check_interval=1.0,  # as a real agent: the example's 2 s stays 2 s
            )
        )
        self.agent.start()
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("AFFINITY_", "CONSUL_"))
        }
        self.env = {**inherited, "AFFINITY_REGISTRY_OPTIONS_ADDRESS": self.agent.url}
        self.procs: list[ChildProcess] = []
        self.log_dir = tmp_path

    def client(self, base_url: str = "", headers: dict[str, str] | None = None) -> httpx.Client:
        verify = client_context(self.ca)
        return httpx.Client(verify=verify, timeout=5.0, base_url=base_url, headers=headers)

    def referral(self) -> str:
        port = free_port()
        env = {
            **self.env,
            "AFFINITY_CONSUL_TOKEN": self.tokens["referral"],
            "AFFINITY_REFERRAL_LISTEN": f"127.0.0.1:{port}",
        }
        proc = self._start(
            "referral", ["referral", "--config", str(self.etc / "referral.toml")], env
        )
        url = f"https://localhost:{port}"
        wait_answering(f"{url}/healthz", proc, verify=client_context(self.ca), timeout=30.0)
        return url

    def server(self, server_id: str) -> str:
        port = free_port()
        url = f"https://localhost:{port}"
        env = {  # server-<id>.env
            **self.env,
            "AFFINITY_SERVER_URL": url,
            "AFFINITY_SERVER_LISTEN": f"127.0.0.1:{port}",
            "AFFINITY_CONSUL_TOKEN": self.tokens["server"],
        }
        # As affinity-server@.service runs it: the id is the instance name, --id %i.
        args = ["serve", HELLO_APP, "--config", str(self.etc / "server.toml"), "--id", server_id]
        proc = self._start(server_id, args, env)
        health = f"{url}/.well-known/affinity/health"
        wait_answering(health, proc, verify=client_context(self.ca), timeout=30.0)
        return url

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> ChildProcess:
        proc = ChildProcess(name, args, env=env, log=self.log_dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        stop(self.procs, grace=0)
        self.agent.stop()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[OneHost]:
    skip_if_real_agent("runs its own agent with ACLs")
    one = OneHost(tmp_path)
    try:
        yield one
    finally:
        one.close()


def test_the_consul_examples_work_as_written_on_one_host(host: OneHost) -> None:
    referral = host.referral()
    servers = {sid: host.server(sid) for sid in ("s1", "s2")}
    admin = {"Authorization": f"Bearer {host.admin_token}"}
    with host.client(base_url=referral, headers=admin) as c:

        def assignable() -> set[str]:
            body = c.get("/v1/servers").json()
            return {s["id"] for s in body["servers"] if s["assignable"]}

        # The agent's checks (private CA) and the referral's own ([health] ca_file) pass.
        wait_until(lambda: assignable() == {"s1", "s2"}, 30.0, 0.1, "both servers assignable")
        assert c.get("/v1/servers").json()["stale"] is False
        assigned = c.get("/v1/assign")
        assert assigned.status_code == 200, assigned.text
        assert assigned.json()["server"]["id"] in servers
        # The app server's drain takes the admin token the example now configures.
        with host.client(headers=admin) as s:
            drained = s.post(servers["s1"] + DRAIN_PATH)
            assert drained.status_code == 200, drained.text
            wait_until(lambda: assignable() == {"s2"}, 30.0, 0.1, "s1 drained")
            assert s.post(servers["s1"] + RESUME_PATH).status_code == 200
        wait_until(lambda: assignable() == {"s1", "s2"}, 30.0, 0.1, "s1 back")
        # A KV drain through the referral, written with the referral's ACL token.
        assert c.post("/v1/servers/s2/drain").status_code == 200
        wait_until(lambda: assignable() == {"s1"}, 30.0, 0.1, "s2 drained through KV")
