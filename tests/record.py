"""What a test plugin was shown in the process it is loaded into, served to the test over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic.response import json

ROOT = Path(__file__).resolve().parents[1]


def loading(module: str) -> dict[str, str]:
    """The environment that loads the test plugin ``module`` into a process a test starts.

    The repository is added to ``PYTHONPATH``, not put in its place: tooling (a
    mutation run, a coverage run) puts its own directories there.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {"AFFINITY_PLUGINS": module, "PYTHONPATH": path}


class Record:
    """A test plugin's record, served and cleared at ``GET path`` of the app it is loaded into.

    A module-level record is the whole record while the app runs one worker.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._items: list[Any] = []

    def append(self, item: Any) -> None:
        self._items.append(item)

    def serve(self, app: Sanic[Any, Any]) -> None:
        """Answer ``GET path`` with what was recorded since the last time, as JSON."""

        async def taken(request: Request) -> HTTPResponse:
            items, self._items = self._items, []
            return json(items)

        name = "test_" + self.path.rsplit("/", 1)[-1]
        app.add_route(taken, self.path, methods=["GET"], name=name)
