"""Active health checks: the referral polls each server's health endpoint.

Each server gets one checking task that waits for each check to end before
the next, so there is never more than one check in flight per server: a
server that hangs is not piled up with connections. Checks run every
``interval`` seconds with ``±jitter`` so the checks of many servers do not
beat in step, and every ``fast_interval`` while a server is changing state.
A server goes critical after ``fall`` failed checks in a row and passing
again after ``rise`` good ones (HAProxy's hysteresis, with faster defaults:
1 s, fall 2, rise 2, so a dead server is noticed in about 2 s instead of
HAProxy's 6 s). ``timeout`` bounds each phase of a check (connecting with
the TLS handshake, then the answer), through httpx's own timeouts: cancelling
a request from outside would leave its socket open. A draining or warning
answer from a live server applies at once. A client's ``avoid`` only wakes
the server's checker early (at most once per ``recheck_interval``): a client
can lie, so only failed checks eject a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from affinity.config import Config, HealthSettings
from affinity.models import LOAD_FORMAT, LOAD_KEYS, HealthStatus, Load, Server
from affinity.plugin import hookimpl
from affinity.plugin.health import HealthSink, HealthSource
from affinity.protocol import HEALTH_PATH
from affinity.web.tls import client_context

log = logging.getLogger("affinity.plugin.health")

MAX_BODY = 64 * 1024
"""The most of a health answer the checker reads; a larger one is a failed check."""
SYNC_INTERVAL = 0.2
_IDENTITY = {"Accept-Encoding": "identity"}
"""Health answers are read raw: a compressed one could inflate past the cap in one chunk."""


@dataclass(slots=True)
class CheckResult:
    """One check's outcome: ``ok`` False means the server did not answer properly."""

    ok: bool
    status: HealthStatus = HealthStatus.CRITICAL
    draining: bool = False
    load: Load | None = None
    reason: str = ""
    latency: float | None = None


@dataclass(slots=True)
class Hysteresis:
    """Rise/fall counting: the state flips only after enough results in a row disagree.

    With ``known`` False the first result sets the state by itself: a server
    nobody has checked yet is not "up" until ``fall`` checks fail, nor "down"
    until ``rise`` pass.
    """

    rise: int
    fall: int
    up: bool = True
    streak: int = 0
    known: bool = True

    def feed(self, ok: bool) -> bool:
        """Count one result; True when it flipped the state."""
        if not self.known:
            self.known = True
            flipped, self.up, self.streak = ok != self.up, ok, 0
            return flipped
        if ok == self.up:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (self.rise if ok else self.fall):
            return False
        self.up, self.streak = ok, 0
        return True

    @property
    def changing(self) -> bool:
        """True while results disagree with the state (checks then come faster)."""
        return self.streak > 0


@dataclass(slots=True)
class _State:
    server: Server
    counter: Hysteresis
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: bool = False
    last_recheck: float = float("-inf")


def parse_answer(code: int, body: bytes) -> CheckResult:
    """Map a health answer (HTTP code and JSON body) to a check result."""
    try:
        data: Any = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = {}
    data = data if isinstance(data, dict) else {}
    draining = data.get("draining") is True
    if code == 200 or (code == 429 and draining):
        status = HealthStatus.PASSING if code == 200 else _status(data, HealthStatus.PASSING)
        return CheckResult(
            ok=True,
            status=status,
            draining=draining,
            load=_load(data),
            reason="draining" if draining else "",
        )
    if code == 429:
        return CheckResult(
            ok=True, status=HealthStatus.WARNING, load=_load(data), reason="server reports warning"
        )
    return CheckResult(ok=False, reason=f"health answered HTTP {code}")


def _status(data: dict[str, Any], default: HealthStatus) -> HealthStatus:
    try:
        return HealthStatus(data.get("status", default))
    except ValueError:
        return default


def _load(data: dict[str, Any]) -> Load | None:
    """The load of a health answer, of either format (:data:`~affinity.models.LOAD_FORMAT`).

    Format 1 (no ``load_format``) has ``active_clients`` only, read as
    ``clients``. A figure that is missing, negative or not a number reads as 0;
    the others go to ``extra``.
    """
    raw = data.get("load")
    if not isinstance(raw, dict):
        return None

    def number(key: str) -> float:
        value = raw.get(key, 0)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and math.isfinite(value) and value >= 0 else 0.0

    def count(key: str) -> int:
        value = raw.get(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    extra = {
        k: float(v)
        for k, v in raw.items()
        if k not in LOAD_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
    }
    version = data.get("load_format")
    return Load(
        clients=number("clients") if version == LOAD_FORMAT else float(count("active_clients")),
        inflight=count("inflight"),
        rps=number("rps"),
        bytes_per_s=number("bytes_per_s"),
        capacity=count("capacity"),
        capacity_inflight=count("capacity_inflight"),
        capacity_bytes_per_s=number("capacity_bytes_per_s"),
        extra=extra,
    )


async def _read_capped(response: httpx.Response, deadline: float) -> bytes | str:
    """The body of a health answer, or why it was not read whole: larger than
    :data:`MAX_BODY`, or still arriving at ``deadline`` (a server dripping it).

    Reading stops there; leaving the ``stream`` block then closes the connection.
    """
    too_large = f"health answer larger than {MAX_BODY // 1024} KiB"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return too_large
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_BODY:
            return too_large
        if time.monotonic() > deadline:
            return "health answer still arriving after the check's time"
    return bytes(body)


def status_of(up: bool, result: CheckResult) -> HealthStatus:
    """What the referral reports: critical while down, the answer's status while up.

    A failed check of a server that is still up (fewer than ``fall`` in a row)
    leaves it passing: one lost packet must not move its clients.
    """
    if not up:
        return HealthStatus.CRITICAL
    return result.status if result.ok else HealthStatus.PASSING


class ActiveHealthChecker(HealthSource):
    """Polls every server's health endpoint with rise/fall hysteresis."""

    name = "active"

    def __init__(
        self, settings: HealthSettings, client: httpx.AsyncClient | None = None, *, source: str = ""
    ) -> None:
        self.settings = settings
        self._client = client or httpx.AsyncClient(
            verify=client_context(settings.ca_file, key="health.ca_file", source=source),
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(max_keepalive_connections=1000, max_connections=None),
        )
        self._states: dict[str, _State] = {}

    async def run(self, sink: HealthSink) -> None:
        try:
            while True:
                self._sync(sink)
                await asyncio.sleep(SYNC_INTERVAL)
        finally:
            for state in self._states.values():
                if state.task is not None:
                    state.task.cancel()

    def _sync(self, sink: HealthSink) -> None:
        """Start a checker for each new server, stop those of removed or moved servers."""
        current = {s.id: s for s in sink.servers()}
        for sid in list(self._states):
            if sid not in current or current[sid].url != self._states[sid].server.url:
                self._stop(self._states.pop(sid))
        for sid, server in current.items():
            if sid not in self._states:
                counter = Hysteresis(self.settings.rise, self.settings.fall, known=False)
                state = _State(server=server, counter=counter)
                self._states[sid] = state
                state.task = asyncio.get_running_loop().create_task(
                    self._watch(state, sink), name=f"affinity.check.{sid}"
                )

    @staticmethod
    def _stop(state: _State) -> None:
        """Let the task end after its check in flight, rather than cancel it mid-request.

        Cancelling an httpx request from outside leaves its socket open; the
        check ends within its own timeout anyway.
        """
        state.stopped = True
        state.wake.set()

    def recheck(self, server_id: str) -> None:
        state = self._states.get(server_id)
        now = time.monotonic()
        if state is None or now - state.last_recheck < self.settings.recheck_interval:
            return
        state.last_recheck = now
        state.wake.set()

    async def _watch(self, state: _State, sink: HealthSink) -> None:
        s = self.settings
        await asyncio.sleep(random.uniform(0, s.interval * s.jitter))  # spread start-up checks
        while not state.stopped:
            # Cleared before the check, so an avoid arriving during it wakes the next one.
            state.wake.clear()
            result = await self.check(state.server)
            if state.stopped:
                return
            self._record(state, result, sink)
            await self._pause(state)

    def _delay(self, state: _State) -> float:
        """Seconds to the next check: jittered, shorter while the state is changing."""
        s = self.settings
        base = min(s.fast_interval, s.interval) if state.counter.changing else s.interval
        return base * random.uniform(1 - s.jitter, 1 + s.jitter)

    async def _pause(self, state: _State) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.wake.wait(), self._delay(state))

    async def check(self, server: Server) -> CheckResult:
        """One health request, each phase bounded by the timeout, its answer by :data:`MAX_BODY`."""
        started = time.monotonic()
        try:
            async with self._client.stream(
                "GET", server.url + HEALTH_PATH, headers=_IDENTITY
            ) as response:
                body = await _read_capped(response, started + 2 * self.settings.timeout)
                result = (
                    parse_answer(response.status_code, body)
                    if isinstance(body, bytes)
                    else CheckResult(ok=False, reason=body)
                )
        except httpx.TimeoutException as exc:
            reason = f"{type(exc).__name__}: no answer within {self.settings.timeout}s"
            result = CheckResult(ok=False, reason=reason)
        except httpx.HTTPError as exc:
            result = CheckResult(ok=False, reason=f"{type(exc).__name__}: {exc}"[:200])
        result.latency = time.monotonic() - started
        return result

    def _record(self, state: _State, result: CheckResult, sink: HealthSink) -> None:
        if state.counter.feed(result.ok):
            log.warning(
                "server %s is %s: %s",
                state.server.id,
                "up" if result.ok else "down",
                result.reason or "answering",
            )
        sink.set_health(
            state.server.id,
            status_of(state.counter.up, result),
            load=result.load,
            draining=result.draining if result.ok else None,
            reason=result.reason,
            latency=result.latency,
            failed=not result.ok,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


@hookimpl(trylast=True)
def affinity_make_health_source(name: str, config: Config) -> HealthSource | None:
    """Provide the active checker for ``health.sources = ["active"]``."""
    if name != "active":
        return None
    return ActiveHealthChecker(config.health, source=config.source_of("health.ca_file"))
