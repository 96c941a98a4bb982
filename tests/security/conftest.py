"""Helpers of the hostile-input suite: processes that must refuse to start, raw TLS sockets."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from affinity.process import ChildProcess
from affinity.testing import Deployment
from affinity.web.tls import client_context

START_TIMEOUT = 30.0


def refused_to_start(proc: ChildProcess) -> str:
    """Wait for ``proc`` to exit, assert it failed as a bad configuration does, return its log."""
    code = proc.wait(START_TIMEOUT)
    output = proc.output()
    assert code == 2, f"exit code {code}, expected 2 (a configuration error):\n{output}"
    assert "Traceback" not in output, output
    return output


@contextmanager
def tls_socket(d: Deployment, url: str, timeout: float = 5.0) -> Iterator[ssl.SSLSocket]:
    """A raw TLS connection to ``url`` (``https://127.0.0.1:<port>``), verified with the dev CA."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = client_context(d.ca)
    raw = socket.create_connection((host, int(port)), timeout=timeout)
    with context.wrap_socket(raw, server_hostname=host) as tls:
        yield tls


def read_until_closed(sock: ssl.SSLSocket, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes the connection (or ``limit`` bytes)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data
