"""Serving: every process, single or one of several workers, uses affinity's hardened TLS.

Real processes on loopback: a handshake pinned to TLS 1.1 at most is refused
by the server (a protocol-version alert), TLS 1.2 and 1.3 are accepted with
HTTP/1.1 by ALPN, for a referral with one and with two workers and for an app
server. A control shows that the TLS 1.1 client does complete a handshake with
a server that allows TLS 1.1, so the refusal is the server's.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sanic import Sanic

from affinity.config import load
from affinity.testing import Deployment, wait_until
from affinity.web.serving import build
from affinity.web.tls import server_context

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.TLSVersion.TLSv1.* is deprecated:DeprecationWarning"
)

TLS_1_1 = "TLSv1_1"
MODERN = ("TLSv1_2", "TLSv1_3")


def client(ca: Path, version: str) -> ssl.SSLContext:
    """A client context pinned to exactly one TLS version (old ones allowed for the probe)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    pinned = getattr(ssl.TLSVersion, version)
    context.minimum_version = pinned
    context.maximum_version = pinned
    if version == TLS_1_1:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers no TLS 1.1 suite otherwise
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def handshake(
    port: int, context: ssl.SSLContext, path: str | None = None
) -> tuple[str, str, bytes]:
    """Handshake with 127.0.0.1:port; the version, the ALPN choice and, for ``path``, the body."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        body = b""
        if path is not None:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            body = answer.partition(b"\r\n\r\n")[2]
        return tls.version() or "", tls.selected_alpn_protocol() or "", body


def refused(port: int, ca: Path) -> bool:
    """True when the server ends a TLS 1.1 handshake: an alert, or (asyncio's way) a bare close."""
    try:
        handshake(port, client(ca, TLS_1_1))
    except ConnectionResetError:
        return True
    except ssl.SSLError as exc:
        # Not one the client raises itself before sending (the control test rules those out).
        return exc.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING")
    return False


@pytest.fixture(scope="module")
def old_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A plain-ssl server that still allows TLS 1.1: the control for the probe."""
    d = Deployment(tmp_path_factory.mktemp("old"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(d.certs.cert, d.certs.key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], d.ca
    finally:
        stop.set()
        socket.create_connection(listener.getsockname()).close()
        thread.join(5)
        listener.close()


def test_the_probe_speaks_tls_1_1_to_a_server_that_allows_it(old_server: tuple[int, Path]) -> None:
    port, ca = old_server
    assert handshake(port, client(ca, TLS_1_1))[0] == "TLSv1.1"


@pytest.mark.parametrize(
    ("role", "workers"), [("referral", 1), ("referral", 2), ("server", 1)], ids=str
)
def test_old_tls_is_refused_and_modern_tls_served(
    deployment: Deployment, role: str, workers: int
) -> None:
    deployment.start_referral(env={"AFFINITY_REFERRAL_WORKERS": str(workers)})
    if role == "referral":
        port, path = deployment.referral_port, "/healthz"
    else:
        deployment.start_server("s1")
        port, path = int(deployment.server_urls["s1"].rsplit(":", 1)[1]), "/"
    ca = deployment.ca
    answered: set[int] = set()

    def every_worker_served_modern_tls() -> bool:
        # A fresh connection each time: the kernel spreads them over the workers.
        for version in MODERN:
            got, alpn, body = handshake(port, client(ca, version), path)
            assert (got, alpn) == (version.replace("_", "."), "http/1.1")
            if role == "referral":
                answered.add(json.loads(body)["worker"])
        return role != "referral" or len(answered) == workers

    wait_until(every_worker_served_modern_tls, 30, 0.0, f"{workers} worker(s) serving TLS")
    # With two workers, enough attempts that both take some (each refusal is the server's alert).
    for _ in range(8 * workers):
        assert refused(port, ca)
    assert handshake(port, client(ca, "TLSv1_2"), path)[0] == "TLSv1.2"  # still serving


def test_the_context_each_process_serves_with_is_the_hardened_one(tmp_path: Path) -> None:
    """What Sanic asks each serving process for (its certificate loader) is ours."""
    d = Deployment(tmp_path / "d")
    config = load(d.config)
    app = build(lambda: Sanic("serving-probe"), config.referral, "referral", config.source)
    context = app.certloader_class({"cert": "ignored", "key": "ignored"}).load(app)
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    reference = server_context(d.certs.cert, d.certs.key)
    assert context.get_ciphers() == reference.get_ciphers()
