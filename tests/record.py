"""What a test plugin was shown in the process it is loaded into, served to the test over HTTP."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic.response import json


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
