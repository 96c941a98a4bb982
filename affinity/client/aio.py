"""The async client: the same rules as the sync one, driven with ``httpx.AsyncClient``.

Every decision lives in :mod:`affinity.client.rules`; this module only
performs the actions they yield, with ``await``. One event loop steps the
rules, so no lock is needed. The state file is written in a worker thread
(it is fsynced, which may block).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx

from affinity.client import store
from affinity.client.referrers import Failure, Fetch, Resolve
from affinity.client.rules import (
    Action,
    Close,
    Emit,
    Persist,
    Read,
    Sleep,
    Steps,
    assign_steps,
    bye_fetch,
    request_steps,
)
from affinity.client.sync import BaseClient, ClientOptions, RequestOptions, make_spec

T = TypeVar("T")
AsyncResolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address of ``host``, from the event loop's resolver (the default)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class AsyncClient(BaseClient):
    """The async twin of :class:`~affinity.client.Client`: same options, same rules.

    ``async with AsyncClient(...) as client: await client.get("/items")``.
    ``transport``, ``sleep`` and ``resolver`` replace the network,
    ``asyncio.sleep`` and DNS in tests.
    """

    def __init__(
        self,
        referrals: str | Sequence[str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        resolver: AsyncResolver = resolve,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(referrals, options, transport=transport)
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())
        self._sleep = sleep
        self._resolver = resolver

    async def request(
        self, method: str, path: str, **options: Unpack[RequestOptions]
    ) -> httpx.Response:
        """Send ``method path`` to the assigned server; the response is read."""
        spec = make_spec(method, path, options)
        return await self._drive(request_steps(self._session, spec))

    async def get(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("GET", path, **options)

    async def head(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("HEAD", path, **options)

    async def options(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("OPTIONS", path, **options)

    async def post(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("POST", path, **options)

    async def put(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("PUT", path, **options)

    async def patch(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("PATCH", path, **options)

    async def delete(self, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        return await self.request("DELETE", path, **options)

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, **options: Unpack[RequestOptions]
    ) -> AsyncIterator[httpx.Response]:
        """The response with its body unread; failover happens only before it starts."""
        spec = make_spec(method, path, options)
        response = await self._drive(request_steps(self._session, spec, stream=True))
        try:
            yield response
        finally:
            await response.aclose()

    async def assign(self) -> str:
        """Ask the referral now (sticky: the old token is sent); the id of the server."""
        return await self._drive(assign_steps(self._session))

    async def aclose(self) -> None:
        """Tell the server the session ended (best effort, a short timeout), then close."""
        try:
            fetch = bye_fetch(self._session)
            if fetch is not None:
                try:
                    await (await self._http.send(self._build(self._http, fetch))).aclose()
                except Exception as exc:  # best effort: the server's count decays anyway
                    self._bye_failed(fetch, exc)
        finally:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _drive(self, steps: Steps[T]) -> T:
        outcome: Any = None
        try:
            while True:
                action = steps.send(outcome)
                outcome = await self._perform(action)
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            steps.close()

    async def _perform(self, action: Action) -> Any:
        match action:
            case Fetch():
                request = self._build(self._http, action)
                try:
                    return await self._http.send(request, stream=action.stream)
                except httpx.RequestError as exc:
                    return Failure(exc)
            case Read():
                try:
                    await action.response.aread()
                except httpx.RequestError as exc:
                    return Failure(exc)
            case Close():
                await action.response.aclose()
            case Sleep():
                await self._sleep(action.seconds)
            case Resolve():
                try:
                    return list(await self._resolver(action.host, action.port))
                except OSError as exc:
                    return Failure(exc)
            case Emit():
                self._emit(action.event)
            case Persist():
                await asyncio.to_thread(store.persist, action.path, action.saved)
        return None
