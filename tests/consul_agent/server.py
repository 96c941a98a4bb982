"""Running the stand-in: on a loop thread of its own, or as a child process.

* :class:`AgentStandIn` serves from a background thread; its methods block until
  done. ``down()`` closes the listening socket and every connection (pending
  blocking reads fail), ``up()`` listens again on the same port with the state
  kept; ``reset()`` and ``force_index()`` reach the state.
* :class:`StandInProcess` runs ``python -m tests.consul_agent``, so a test can
  kill it (it comes back empty, index at 1, on the same port: a restarted
  ``-dev`` agent) or freeze it (SIGSTOP: connections accepted, never answered).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from tests.consul_agent.api import AgentApi, plain_text_errors
from tests.consul_agent.decode import parse_go_duration
from tests.consul_agent.state import AgentState, StandInConfig

T = TypeVar("T")

READY = "CONSUL_STANDIN_READY "
ROOT = Path(__file__).resolve().parents[2]


class AgentStandIn:
    """The stand-in on its own event loop, in a daemon thread."""

    def __init__(self, config: StandInConfig | None = None) -> None:
        self.config = config or StandInConfig()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._state: AgentState | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def state(self) -> AgentState:
        if self._state is None:
            raise RuntimeError("the Consul stand-in is not running")
        return self._state

    def start(self, port: int = 0) -> int:
        self._loop, self.port = asyncio.new_event_loop(), port
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self._state = self.call(lambda: AgentState(self.config))
            self.call(self.state.start)
            self.up()
        except BaseException:
            self.stop()
            raise
        return self.port

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self.down()
        if self._state is not None:
            self._run(self._state.close())
        self._run(_cancel_leftovers())
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop, self._thread, self._state = None, None, None

    def down(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self._run(runner.cleanup())

    def up(self) -> None:
        if self._runner is None:
            self._runner = self._run(self._listen())
            self.port = self._runner.addresses[0][1]

    async def _listen(self) -> web.AppRunner:
        app = web.Application(middlewares=[plain_text_errors])
        app.add_routes(AgentApi(self.state).routes())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        return runner

    def reset(self) -> None:
        """Forget everything; the index restarts at 1 (an agent restarted without its data)."""
        self.call(self.state.reset)

    def force_index(self, index: int) -> None:
        """Move every index back to at most ``index`` (a snapshot restore)."""
        self.call(lambda: self.state.force_index(index))

    def wait_parked(self, count: int = 1, timeout: float = 10.0) -> None:
        """Return once ``count`` blocking reads wait in the stand-in."""
        self._run(asyncio.wait_for(self.state.until_parked(count), timeout))

    def call(self, func: Callable[[], T]) -> T:
        """``func()`` on the stand-in's loop."""

        async def run() -> T:
            return func()

        return self._run(run())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the Consul stand-in is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)


async def _cancel_leftovers() -> None:
    """Cancel handlers still in a blocking read after the server closed: aiohttp does not
    cancel a handler whose client hung up, and the loop must not stop under it."""
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


class StandInProcess:
    """The stand-in as a child process: killed, restarted on the same port, frozen, thawed."""

    def __init__(self, args: Sequence[str] = ()) -> None:
        self.args = list(args)
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None, timeout: float = 15.0) -> int:
        wanted = self.port if port is None else port
        command = [sys.executable, "-m", "tests.consul_agent", "--port", str(wanted), *self.args]
        self._proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout)
        line = self._proc.stdout.readline().strip() if ready else ""
        if not line.startswith(READY):
            self.kill()
            raise RuntimeError(f"the stand-in process did not start within {timeout}s: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self.port

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def restart(self) -> int:
        """Killed, then a fresh, empty agent on the same port."""
        self.kill()
        return self.start(self.port)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            raise RuntimeError("the stand-in process is not running")
        self._proc.send_signal(sig)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, printing the address once listening."""
    parser = argparse.ArgumentParser(description="A stand-in for the Consul agent HTTP API")
    parser.add_argument("--port", type=int, default=8500, help="0 picks a free port")
    parser.add_argument("--check-ca-file", help="a CA the HTTP checks trust")
    parser.add_argument("--min-check-interval", type=parse_go_duration, default="1s")
    args = parser.parse_args(argv)
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # the loop thread inherits the mask
    agent = AgentStandIn(
        StandInConfig(check_ca_file=args.check_ca_file, min_check_interval=args.min_check_interval)
    )
    agent.start(args.port)
    print(f"{READY}{agent.url}", flush=True)
    signal.sigwait(stop)
    agent.stop()
    return 0
