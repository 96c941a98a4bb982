"""The registry watch loop: blocking queries feeding the server table, with back-off on errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from affinity.backoff import Backoff
from affinity.errors import RegistryError
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
    failures = 0
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
            failures += 1
            delay = backoff.delay(failures)
            _log_failure(registry.name, exc, failures, delay)
            mark_stale(_reason(exc))
            await sleep(delay)
            continue
        if failures:
            log.info("registry %s answers again", registry.name)
            failures = 0
        index = max(view.index, 1)
        await sleep(min_interval)


def _reason(exc: Exception) -> str:
    if isinstance(exc, RegistryError):
        return str(exc)
    return f"the registry view could not be applied ({type(exc).__name__}: {exc})"


def _log_failure(name: str, exc: Exception, failures: int, delay: float) -> None:
    """A failing registry is a warning; a view that breaks the referral is an error, its
    traceback logged the first time only (the loop retries the same view)."""
    if isinstance(exc, RegistryError):
        log.warning(
            "registry %s failed (%s); keeping the last view, retry in %.2fs", name, exc, delay
        )
        return
    log.error(
        "registry %s gave a view this referral cannot use (%s: %s); keeping the last view, "
        "marked stale, retry in %.2fs",
        name,
        type(exc).__name__,
        exc,
        delay,
        exc_info=exc if failures == 1 else None,
    )
