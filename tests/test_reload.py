"""SIGHUP: key rings, the admin token and shared settings re-read, no connection dropped."""

from __future__ import annotations

import re
import secrets
import signal
import socket
import ssl
from pathlib import Path

import orjson
import pytest

from affinity.process import ChildProcess
from affinity.protocol import RESUME_PATH, TOKEN_HEADER
from affinity.testing import Deployment, wait_until
from affinity.tokens.keyring import generate_keyfile, rotate_keyfile
from affinity.web.tls import client_context
from tests.test_systemd import NotifySocket

MAX_ANSWER = 1 << 20


class KeepAlive:
    """One HTTP/1.1 connection over TLS, kept open across requests: a dropped connection
    fails the next request instead of being quietly opened again, as a client pool would."""

    def __init__(self, url: str, ca: Path) -> None:
        host, port = url.removeprefix("https://").rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=10)
        context = client_context(ca)
        context.set_alpn_protocols(["http/1.1"])
        self.sock: ssl.SSLSocket = context.wrap_socket(raw, server_hostname=host)
        self.buffer = b""

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> int:
        return self.exchange(method, path, headers)[0]

    def exchange(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """The status and body of one request on this connection."""
        lines = [f"{method} {path} HTTP/1.1", "Host: affinity.test"]
        lines += ["Content-Length: 0"] if method == "POST" else []
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        assert length is not None, head
        body = self._read_exactly(int(length.group(1)))
        assert not re.search(rb"(?im)^connection:\s*close", head), head
        return status, body

    def _read_until(self, end: bytes) -> bytes:
        while end not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(end, 1)
        return head

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._more()
        body, self.buffer = self.buffer[:n], self.buffer[n:]
        return body

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed the connection"
        self.buffer += chunk
        assert len(self.buffer) < MAX_ANSWER

    def close(self) -> None:
        self.sock.close()


def one_connection_per_worker(url: str, ca: Path, workers: int) -> dict[int, KeepAlive]:
    """Open connections until each of ``workers`` referral workers holds one (by the worker
    pid that ``/healthz`` names); the kernel hands each new one to either worker."""
    kept: dict[int, KeepAlive] = {}
    for _ in range(100):
        connection = KeepAlive(url, ca)
        status, body = connection.exchange("GET", "/healthz")
        pid = orjson.loads(body)["worker"]
        if status != 200 or pid in kept:
            connection.close()
        else:
            kept[pid] = connection
        if len(kept) == workers:
            return kept
    pytest.fail(f"100 connections reached only workers {sorted(kept)}")


def reloads_logged(proc: ChildProcess) -> set[int]:
    """The process ids that have logged a complete reload."""
    done = re.findall(
        r"reloaded key ring, admin token, shared settings \(pid (\d+)\)", proc.output()
    )
    return {int(pid) for pid in done}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_sighup_reloads_every_referral_worker_and_keeps_connections(tmp_path: Path) -> None:
    settings = "workers = 2\nkeep_alive_timeout = 120.0"
    with NotifySocket() as listener, Deployment(tmp_path, referral=settings) as d:
        generate_keyfile(tmp_path / "keys.json", "EdDSA", True)  # public keys in the JWKS
        proc = d.start_referral(wait=False, env={"NOTIFY_SOCKET": listener.address})
        assert listener.receive(proc)["READY"] == "1"
        old_token = d.admin_token
        kept = one_connection_per_worker(d.referral_url, d.ca, 2)
        for connection in kept.values():
            assert connection.request("GET", "/v1/servers", bearer(old_token)) == 200
        with d.client() as client:
            jwks = client.get(f"{d.referral_url}/.well-known/jwks.json").json()
            old_kids = {k["kid"] for k in jwks["keys"]}
            assert old_kids, jwks

        ring = rotate_keyfile(tmp_path / "keys.json", None, retire_after=None)
        new_kid = ring.active.kid if ring.active else ""
        assert new_kid and new_kid not in old_kids
        new_token = secrets.token_urlsafe(32)
        (tmp_path / "admin-token").write_text(new_token)
        proc.signal(signal.SIGHUP)

        # Every worker reloads, on the connection it held before: nothing was dropped.
        for pid, connection in kept.items():
            wait_until(
                lambda c=connection: c.request("GET", "/v1/servers", bearer(new_token)) == 200,
                timeout=20,
                what=f"worker {pid} taking the new admin token",
            )
            assert connection.request("GET", "/v1/servers", bearer(old_token)) == 401
            _, body = connection.exchange("GET", "/.well-known/jwks.json")
            assert {k["kid"] for k in orjson.loads(body)["keys"]} == old_kids | {new_kid}
            assert orjson.loads(connection.exchange("GET", "/healthz")[1])["worker"] == pid
            connection.close()
        assert proc.alive()


@pytest.mark.slow
def test_sighup_reloads_an_app_servers_keys_and_admin_token(tmp_path: Path) -> None:
    server_settings = "require_token = true\nkeep_alive_timeout = 120.0"
    with Deployment(tmp_path, server=server_settings) as d:
        d.start_referral()
        proc = d.start_server("s1")
        url = d.server_urls["s1"]
        old_admin = d.server_admin_token
        kept = KeepAlive(url, d.ca)
        assert kept.request("GET", "/", {TOKEN_HEADER: d.token("s1")}) == 200

        rotate_keyfile(tmp_path / "keys.json", None, retire_after=None)
        newly_signed = d.token("s1")  # signed with the key the rotation added
        assert kept.request("GET", "/", {TOKEN_HEADER: newly_signed}) == 401
        new_admin = secrets.token_urlsafe(32)
        (tmp_path / "server-admin-token").write_text(new_admin)

        proc.signal(signal.SIGHUP)
        wait_until(lambda: proc.pid in reloads_logged(proc), timeout=20, what="the reload")
        assert kept.request("GET", "/", {TOKEN_HEADER: newly_signed}) == 200
        assert kept.request("POST", RESUME_PATH, bearer(new_admin)) == 200
        assert kept.request("POST", RESUME_PATH, bearer(old_admin)) == 401
        kept.close()


@pytest.mark.slow
def test_a_reload_that_fails_keeps_what_was_in_force(tmp_path: Path) -> None:
    with Deployment(tmp_path) as d:
        proc = d.start_referral()
        (tmp_path / "keys.json").write_text("{not json")
        (tmp_path / "admin-token").write_text("short")
        proc.signal(signal.SIGHUP)
        wait_until(
            lambda: "reloaded shared settings" in proc.output(), timeout=20, what="the reload"
        )
        log = proc.output()
        assert "reload: key ring kept as it was" in log and "keys.json" in log
        assert "reload: admin token kept as it was" in log and "admin_token_file" in log
        assert "Traceback" not in log
        with d.admin() as admin:
            assert admin.get("/v1/servers").status_code == 200  # the old token still works
            assert admin.get("/v1/assign").status_code in (200, 503)
        assert proc.alive()
