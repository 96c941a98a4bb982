"""The registry watch loop: blocking queries feeding the server table, with back-off on errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from affinity.backoff import Backoff
from affinity.errors import RegistryError
from affinity.logs import Repeated
from affinity.plugin.registry import Registry, RegistryView

log = logging.getLogger("affinity.referral")


async def watch_registry(
    registry: Registry,
    apply: Callable[[RegistryView], None],
    mark_stale: Callable[[str], None],
    *,
    wait: float = 30.0,
    min_interval: float = 0.05,
    backoff_cap: float = 10.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Apply every new registry view until cancelled; nothing else ends it.

    The index is compared as an integer and reset to 0 when it goes backwards
    (a registry that lost its state); the loop never spins faster than
    ``min_interval`` and backs off with full jitter while the registry fails,
    or while a view cannot be applied, keeping the last view (marked stale)
    meanwhile and trying again from the same index.
    """
    index = 0
    failures = Repeated(log, f"registry {registry.name} failed; keeping the last view")
    backoff = Backoff(base=min(0.1, backoff_cap), cap=backoff_cap)
    while True:
        try:
            view = await registry.watch(index, wait)
            if view.index < index:
                log.warning(
                    "registry index went backwards (%d < %d); starting over", view.index, index
                )
                index = 0
            if view.index != index or view.stale:
                apply(view)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = backoff.delay(failures.failures + 1)
            _log_failure(failures, exc, delay)
            mark_stale(_reason(exc))
            await sleep(delay)
            continue
        failures.recovered(f"registry {registry.name} answers again")
        index = max(view.index, 1)
        await sleep(min_interval)


def _reason(exc: Exception) -> str:
    if isinstance(exc, RegistryError):
        return str(exc)
    return f"the registry view could not be applied ({type(exc).__name__}: {exc})"


def _log_failure(failures: Repeated, exc: Exception, delay: float) -> None:
    """A failing registry is a warning; a view that breaks the referral is an error, with
    its traceback (the loop retries the same view)."""
    if isinstance(exc, RegistryError):
        failures.failed(exc, retry_in=delay)
        return
    failures.failed(
        f"it gave a view this referral cannot use ({type(exc).__name__}: {exc}), marked stale",
        retry_in=delay,
        level=logging.ERROR,
        exc_info=exc,
    )
