"""SIGTERM and SIGINT at any moment of a start-up: held until the process can act on them.

Sanic puts its handlers in place part-way through a start-up, and a stop
signal that comes earlier goes wrong in ways of its own (Sanic 25.12):

* one process, or a worker before its loop handlers: the default action, so
  SIGTERM ends the process at once (no clean-up) and SIGINT raises
  KeyboardInterrupt wherever start-up is, a traceback in the log. A worker
  acknowledges its start *before* it installs its handlers, so the SIGINT
  Sanic's main process sends its workers to stop them can land in that gap.
* the main process of several workers: ``WorkerManager`` installs its handler
  before any worker starts and acts on it at once. Before the workers start,
  it terminates none (there are none yet), starts them anyway and never stops
  them. While it waits for the workers to acknowledge their start
  (``wait_for_ack``), it marks them terminated, so the acknowledgements it
  waits for never come, and it puts its stop message back on the pipe it
  polls: it spins there for ever, even when both workers have logged
  "Worker ready" (it looks only ten times a second).

So every serving process holds the two signals (blocks them in its main
thread; threads started meanwhile inherit that) from its first step until it
can act on them: :func:`release_once_serving` when its loop serves (a worker,
or the one process), :func:`release_once_monitoring` in the main process of
several workers, which also defers a stop until Sanic's manager watches its
workers. A signal that came meanwhile is then taken as if it came just then.

Sanic's own stop, run in the signal handler, talks to its state manager
through a multiprocessing proxy; if the signal lands while the main thread is
itself in such a call (it makes them every tenth of a second), the two share
one connection and the stop fails with a TypeError deep in Sanic. So the stop
is asked of Sanic's monitor loop instead (:func:`stop_through_the_monitor`),
which does the same shut-down outside any handler.
Sanic offers no hook for any of this; if it learns to stop cleanly at any
moment, this module can go.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from sanic import Sanic
from sanic.worker.constants import ProcessState

log = logging.getLogger("affinity.serving")
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_POLL = 0.05
"""How often the main process looks whether Sanic's manager has begun to watch its workers."""

Handler = Callable[[int, Any], object]


def hold() -> None:
    """Hold SIGTERM and SIGINT in this thread (the main one) until :func:`release`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release() -> None:
    """Take SIGTERM and SIGINT again; one held meanwhile reaches its handler now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def release_once_serving(app: Sanic[Any, Any]) -> None:
    """Release the signals once ``app``'s loop serves, its handlers in place (Sanic's, or those
    an ``after_server_start`` listener registered before this one put there)."""
    app.register_listener(_release_when_running, "after_server_start")


def _release_when_running(app: Sanic[Any, Any]) -> None:
    # Sanic marks the app running just before its loop's run_forever(). A handler that
    # stops the loop (Sanic's own) must not run before: the loop would stop inside the
    # run_until_complete() of the start-up events, and the process fail with a RuntimeError.
    # Sanic has no event for it; this looks once per turn of the loop, a few turns at most.
    loop = asyncio.get_running_loop()

    def look() -> None:
        if app.state.is_running:
            release()
        else:
            loop.call_soon(look)

    loop.call_soon(look)


def stop_through_the_monitor(app: Sanic[Any, Any]) -> None:
    """In the main process of several workers: replace Sanic's SIGTERM and SIGINT handler
    by one that asks its monitor loop to stop. Register it before any listener that wraps
    the handler in place (those then wrap this one)."""
    app.register_listener(_ask_the_monitor, "main_process_ready")


def _ask_the_monitor(app: Sanic[Any, Any]) -> None:
    manager = app.manager

    def stop(signum: int, frame: Any) -> None:
        if manager._shutting_down:  # a second signal while stopping: Sanic's kill
            manager.shutdown_signal(signum, frame)  # type: ignore[no-untyped-call]
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        # The loop shuts the workers down (as Sanic's handler would) and leaves.
        manager.monitor_publisher.send("__TERMINATE__")

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)


def release_once_monitoring(app: Sanic[Any, Any]) -> None:
    """In the main process of several workers: release the signals at ``main_process_ready``
    with a handler that passes a stop to Sanic's (or to one a listener registered before this
    one wrapped it in) only once Sanic's manager watches its workers, and defers it until then."""
    done = threading.Event()
    app.register_listener(lambda app: _Deferring(app, done).install(), "main_process_ready")
    app.register_listener(lambda app: done.set(), "main_process_stop")


class _Deferring:
    """SIGTERM and SIGINT of Sanic's main process, passed on once its manager monitors."""

    def __init__(self, app: Sanic[Any, Any], done: threading.Event) -> None:
        self.manager = app.manager
        self.done = done
        self.pending: int | None = None
        self.handlers: dict[int, Handler] = {}
        self.main = threading.get_ident()

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):
                self.handlers[sig] = handler
                signal.signal(sig, self.on_signal)
        release()

    def monitoring(self) -> bool:
        """Whether the manager is past its wait for the workers' start, in its monitor loop.

        It marks a process acknowledged (or failed, or gone) only there; before, every
        process it started is ``STARTED`` at most.
        """
        return any(p.state >= ProcessState.ACKED for p in self.manager.transient_processes)

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.monitoring():
            self.handlers[signum](signum, frame)
            return
        first = self.pending is None
        self.pending = signum
        if first:
            threading.Thread(target=self._pass_on_later, name="affinity.stop", daemon=True).start()

    def _pass_on_later(self) -> None:
        while not self.done.wait(_POLL):
            if self.monitoring() and self.pending is not None:
                # Handlers run in the main thread: send it the signal to take it there.
                signal.pthread_kill(self.main, self.pending)
                return
