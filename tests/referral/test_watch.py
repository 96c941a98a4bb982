"""The registry watch loop keeps going whatever a registry or a view does."""

from __future__ import annotations

import asyncio

import pytest

from affinity.errors import RegistryUnavailable
from affinity.plugin.registry import Registry, RegistryView
from affinity.referral.watch import watch_registry


class Scripted(Registry):
    """Answers each watch with the next item: a view, or an exception to raise."""

    name = "scripted"

    def __init__(self, script: list[RegistryView | Exception]) -> None:
        self.script = script
        self.calls: list[int] = []

    async def watch(self, index: int, wait: float) -> RegistryView:
        self.calls.append(index)
        if not self.script:
            raise asyncio.CancelledError  # the end of the script ends the test
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


async def _run(registry: Scripted, apply_fails: int = 0) -> tuple[list[int], list[str]]:
    applied: list[int] = []
    stale: list[str] = []
    failures = [apply_fails]

    def apply(view: RegistryView) -> None:
        if failures[0]:
            failures[0] -= 1
            raise TypeError("unhashable type: 'list'")
        applied.append(view.index)

    async def no_sleep(delay: float) -> None:
        return None

    with pytest.raises(asyncio.CancelledError):
        await watch_registry(registry, apply, stale.append, sleep=no_sleep)
    return applied, stale


async def test_a_registry_that_raises_anything_is_retried() -> None:
    registry = Scripted(
        [
            RegistryView(index=3),
            KeyError("service"),
            RegistryUnavailable("down"),
            RegistryView(index=4),
        ]
    )
    applied, stale = await _run(registry)
    assert applied == [3, 4]
    assert "KeyError" in stale[0] and stale[1] == "down"


async def test_a_view_that_cannot_be_applied_marks_stale_and_is_tried_again() -> None:
    registry = Scripted([RegistryView(index=5), RegistryView(index=5), RegistryView(index=6)])
    applied, stale = await _run(registry, apply_fails=1)
    assert applied == [5, 6], "the same view again, then the next"
    assert registry.calls == [0, 0, 5, 6]
    assert len(stale) == 1 and "TypeError" in stale[0]
