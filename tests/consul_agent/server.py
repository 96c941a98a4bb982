"""The stand-in on an event loop of its own, in a background thread, for synchronous callers.

Besides serving, it makes the trouble a real agent can make, each method
returning once done: ``down()`` closes the listening socket and every connection
(pending blocking reads fail) and ``up()`` listens again on the same port, state
kept; ``restart()`` is both with everything forgotten in between, the index back
at 1 (a ``-dev`` agent restarted); ``freeze()`` leaves connections accepted but
unanswered until ``thaw()`` (a stopped process); ``force_index()`` moves the index
back (a snapshot restore).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from tests.consul_agent.api import AgentApi
from tests.consul_agent.state import AgentState, StandInConfig

T = TypeVar("T")


class AgentStandIn:
    """The stand-in, serving from a daemon thread."""

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
            self.thaw()
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
        api = AgentApi(self.state)
        app = web.Application(middlewares=[api.middleware])
        app.add_routes(api.routes())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        return runner

    def restart(self) -> None:
        self.down()
        self.reset()
        self.up()

    def reset(self) -> None:
        """Forget everything; the index restarts at 1 (an agent restarted without its data)."""
        self.call(self.state.reset)

    def freeze(self) -> None:
        self.call(self.state.unfrozen.clear)

    def thaw(self) -> None:
        self.call(self.state.unfrozen.set)

    def force_index(self, index: int) -> None:
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
