"""Plugins a caller passes to ``ReferralServer(plugins=...)``: a module and an object with state."""

from __future__ import annotations

import os
from typing import Any

from sanic import HTTPResponse, Request
from sanic.response import json

from affinity import hookimpl


async def _marked(request: Request) -> HTTPResponse:
    return json({"worker": os.getpid()})


@hookimpl
def affinity_register_routes(app: Any, role: str) -> None:
    """This module as a plugin: ``GET /marked`` names the worker that answered."""
    app.add_route(_marked, "/marked", name="marked")


class Tag:
    """A plugin object: ``GET /tag`` answers its tag, so a worker shows it has a copy."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    @hookimpl
    def affinity_register_routes(self, app: Any, role: str) -> None:
        async def tagged(request: Request) -> HTTPResponse:
            return json({"tag": self.tag, "worker": os.getpid()})

        app.add_route(tagged, "/tag", name="tag")
