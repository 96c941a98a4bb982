"""SIGHUP: re-read what may change without a restart, in every serving process, keeping
every connection open.

A role names what it re-reads with :func:`on_reload` as it builds its app (the
key ring, the admin token, the shared settings). :func:`install` makes each
serving process run them on ``SIGHUP``; the handler is in place before Sanic
counts the process as started. With several workers the signal reaches the
main process (``systemctl reload``, ``kill -HUP $MAINPID``), which passes it on
to every worker that has started (:func:`relay_to_workers`). Each part is
re-read on its own: one that fails (a key file that no longer parses) is
logged, and that part keeps what it had while the others take their new value.
Nothing else of the configuration changes; that takes a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from sanic import Sanic

from affinity.errors import AffinityError

log = logging.getLogger("affinity.reload")
RELOAD_SIGNAL = signal.SIGHUP
Reloader = Callable[[], Awaitable[None]]


def on_reload(app: Sanic[Any, Any], what: str, reloader: Reloader) -> None:
    """Run ``reloader`` on every reload of ``app``'s process; ``what`` names it in the log."""
    reloaders: list[tuple[str, Reloader]] | None = getattr(app.ctx, "affinity_reloaders", None)
    if reloaders is None:
        reloaders = app.ctx.affinity_reloaders = []
    reloaders.append((what, reloader))


async def reload(app: Sanic[Any, Any]) -> list[str]:
    """Run every reloader of ``app`` once, one reload at a time; the names of those that failed."""
    lock: asyncio.Lock | None = getattr(app.ctx, "affinity_reload_lock", None)
    if lock is None:
        lock = app.ctx.affinity_reload_lock = asyncio.Lock()
    failed = []
    async with lock:
        for what, reloader in getattr(app.ctx, "affinity_reloaders", ()):
            try:
                await reloader()
            except AffinityError as exc:
                failed.append(what)
                log.error("reload: %s kept as it was: %s", what, exc)
            except Exception as exc:  # a bug in one part must not stop the others
                failed.append(what)
                log.error("reload: %s kept as it was", what, exc_info=exc)
        done = [
            what for what, _ in getattr(app.ctx, "affinity_reloaders", ()) if what not in failed
        ]
        log.info("reloaded %s (pid %d)", ", ".join(done) or "nothing", os.getpid())
    return failed


def install(app: Sanic[Any, Any]) -> None:
    """Reload ``app`` on SIGHUP in the process that serves it."""
    app.register_listener(_listen, "before_server_start")


async def _listen(app: Sanic[Any, Any]) -> None:
    asyncio.get_running_loop().add_signal_handler(RELOAD_SIGNAL, _reload_soon, app)


def _reload_soon(app: Sanic[Any, Any]) -> None:
    task = asyncio.get_running_loop().create_task(reload(app), name="affinity.reload")
    # Keep a reference until it is done: the loop holds only weak ones.
    running: set[asyncio.Task[list[str]]] = app.ctx.__dict__.setdefault("affinity_reloading", set())
    running.add(task)
    task.add_done_callback(running.discard)


def relay_to_workers(app: Sanic[Any, Any]) -> None:
    """In Sanic's main process: pass SIGHUP on to every worker that has started.

    A worker counts as started once Sanic's main process has seen every worker
    acknowledge its start, which each does after its SIGHUP handler is in place
    (and before systemd hears ``READY=1``). A SIGHUP before that reaches no
    worker and says so in the log.
    """
    from sanic.worker.constants import ProcessState

    manager = app.manager

    def relay(signum: int, frame: object) -> None:
        started = [
            process.pid
            for process in manager.transient_processes
            if process.pid and process.state == ProcessState.ACKED and process.is_alive()
        ]
        for pid in started:
            try:
                os.kill(pid, RELOAD_SIGNAL)
            except ProcessLookupError:
                continue
        if started:
            log.info("SIGHUP passed on to %d workers", len(started))
        else:
            log.warning("SIGHUP before the workers started: not passed on; send it again")

    signal.signal(RELOAD_SIGNAL, relay)
