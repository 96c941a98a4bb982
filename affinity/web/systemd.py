"""systemd's readiness protocol (``Type=notify``): a few lines of text to ``$NOTIFY_SOCKET``.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` set to a unix
datagram socket (a path, or an abstract name written with a leading ``@``)
and waits for ``READY=1`` before it counts the service as started; ``STOPPING=1``
says the service is shutting down, and ``STATUS=`` is the line ``systemctl
status`` shows. Without ``NOTIFY_SOCKET`` (not under systemd) :func:`notify`
does nothing. The protocol is described in sd_notify(3); :func:`install`
speaks it for a served app.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from sanic import Sanic

log = logging.getLogger("affinity.systemd")
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; True if sent.

    A failure to send is logged, never raised: the service keeps serving (systemd
    then times the start out, which says more than a crash would).
    """
    named = os.environ.get(NOTIFY_SOCKET, "")
    if not named:
        return False
    if not named.startswith(("/", "@")):
        log.warning("%s=%r is neither a path nor an abstract name", NOTIFY_SOCKET, named)
        return False
    address = "\0" + named[1:] if named.startswith("@") else named
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("could not notify systemd at %s=%s: %s", NOTIFY_SOCKET, named, exc)
        return False
    return True


def ready(line: str) -> bool:
    """The service is serving: ``READY=1`` with the status ``line`` and this process's id."""
    return notify("READY=1", f"STATUS={line}", f"MAINPID={os.getpid()}")


def stopping(status: str = "stopping") -> bool:
    """The service is shutting down: ``STOPPING=1``."""
    return notify("STOPPING=1", f"STATUS={status}")


def status(text: str) -> bool:
    """A new line for ``systemctl status``."""
    return notify(f"STATUS={text}")


def install(app: Sanic[Any, Any], line: Callable[[], str], workers: int) -> None:
    """Tell systemd about ``app``'s life: ready once it serves, stopping when it stops.

    ``line()`` is the status line, such as ``referral serving https://127.0.0.1:8400
    (pid 1234, 2 workers)``, made in the process that sends it. One process
    (``workers == 1``) says it itself. With several workers the main process (the
    one systemd started) says it: ready once every worker has started, stopping
    at SIGINT or SIGTERM.
    """
    if workers == 1:

        def serving(app: Sanic[Any, Any]) -> None:
            ready(line())

        def stopped(app: Sanic[Any, Any]) -> None:
            stopping()

        app.register_listener(serving, "after_server_start")
        app.register_listener(stopped, "before_server_stop")
        return
    done = threading.Event()
    app.register_listener(
        lambda app: _watch_workers(app, line, workers, done), "main_process_ready"
    )
    app.register_listener(lambda app: done.set(), "main_process_stop")


def _watch_workers(
    app: Sanic[Any, Any], line: Callable[[], str], workers: int, done: threading.Event
) -> None:
    """In the main process: READY=1 once every worker has started, STOPPING=1 on a signal."""
    from sanic.worker.constants import ProcessState

    manager = app.manager
    for sig in (signal.SIGINT, signal.SIGTERM):
        sanic_handler = signal.getsignal(sig)
        if callable(sanic_handler):
            signal.signal(sig, functools.partial(_stop_then, sanic_handler))

    def wait_for_workers() -> None:
        # Sanic's main process marks a worker ACKED once every worker has reported its
        # start; there is no event to wait on, so look a few times a second.
        while not done.wait(0.1):
            started = [p for p in manager.transient_processes if p.state == ProcessState.ACKED]
            if len(started) >= workers:
                ready(line())
                return

    threading.Thread(target=wait_for_workers, name="affinity.systemd", daemon=True).start()


def _stop_then(handler: Callable[[int, Any], object], signum: int, frame: Any) -> None:
    stopping()
    handler(signum, frame)
