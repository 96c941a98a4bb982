"""systemd readiness (``Type=notify``): the messages a real unix datagram socket receives."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from affinity.process import ChildProcess
from affinity.protocol import HEALTH_PATH
from affinity.testing import HELLO_APP, Deployment, free_port
from affinity.web import systemd
from affinity.web.tls import client_context


class NotifySocket:
    """What systemd listens on: a unix datagram socket, at a path or an abstract name."""

    def __init__(self, path: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"affinity-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)

    def receive(self, child: ChildProcess | None = None, timeout: float = 30.0) -> dict[str, str]:
        """The next message as its fields; fails if ``child`` exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if ready:
                data = self.sock.recv(4096).decode()
                return dict(line.split("=", 1) for line in data.splitlines())
            if child is not None and not child.alive():
                pytest.fail(f"{child.name} exited before notifying:\n{child.output()}")
        pytest.fail(f"no message within {timeout}s")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(
    abstract: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NotifySocket(None if abstract else tmp_path / "notify") as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
        assert systemd.ready("referral serving https://127.0.0.1:8400")
        assert listener.receive() == {
            "READY": "1",
            "STATUS": "referral serving https://127.0.0.1:8400",
            "MAINPID": str(os.getpid()),
        }
        assert systemd.stopping()
        assert listener.receive() == {"STOPPING": "1", "STATUS": "stopping"}


def test_without_a_notify_socket_nothing_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not systemd.notify("READY=1")  # logged, never raised: the service keeps serving
    assert "could not notify systemd" in caplog.text
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert not systemd.notify("READY=1")
    assert "neither a path nor an abstract name" in caplog.text


@pytest.mark.slow
def test_an_app_server_is_ready_once_it_serves_and_stopping_at_sigterm(tmp_path: Path) -> None:
    with NotifySocket(tmp_path / "notify") as listener, Deployment(tmp_path) as d:
        d.start_referral()
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        env = {
            **d.env,
            "NOTIFY_SOCKET": listener.address,
            "AFFINITY_SERVER_ID": "from-the-environment",
            "AFFINITY_REGISTRATION_TOKEN": d.registration_token("s1"),
        }
        argv = ["serve", HELLO_APP, "--config", str(d.config), "--id", "s1"]
        argv += ["--listen", f"127.0.0.1:{port}", "--url", url]
        proc = d.servers["s1"] = ChildProcess("s1", argv, env=env, log=tmp_path / "s1.log")
        ready = listener.receive(proc)
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid), ready
        assert ready["STATUS"] == f"app server s1 serving {url} (pid {proc.pid}, 1 worker)"
        # Ready means serving: the first request needs no retry. The flag's id won.
        with httpx.Client(verify=client_context(d.ca), timeout=5) as client:
            assert client.get(f"{url}{HEALTH_PATH}").json()["server"] == "s1"
        proc.signal(signal.SIGTERM)
        stopping = listener.receive(proc)
        assert stopping == {"STOPPING": "1", "STATUS": "draining, then stopping"}
        assert proc.wait(30) == 0


@pytest.mark.slow
def test_a_referral_with_workers_is_ready_once_every_worker_serves(tmp_path: Path) -> None:
    with NotifySocket() as listener, Deployment(tmp_path, referral="workers = 2") as d:
        proc = d.start_referral(wait=False, env={"NOTIFY_SOCKET": listener.address})
        ready = listener.receive(proc)
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid), ready
        assert ready["STATUS"] == f"referral serving {d.referral_url} (pid {proc.pid}, 2 workers)"
        with httpx.Client(verify=client_context(d.ca), timeout=5) as client:
            assert client.get(f"{d.referral_url}/healthz").status_code == 200
        proc.signal(signal.SIGTERM)
        assert listener.receive(proc)["STOPPING"] == "1"
        assert proc.wait(30) == 0
