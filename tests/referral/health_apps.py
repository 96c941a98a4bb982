"""An app server whose health answers follow a script, for the referral's health tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from sanic import HTTPResponse, Request
from sanic.response import json

from affinity import AppServer, HealthStatus, route

_LETTERS = {"p": HealthStatus.PASSING, "c": HealthStatus.CRITICAL, "w": HealthStatus.WARNING}


class Scripted(AppServer):
    """``POST /script/<letters>`` makes health answers cycle through the letters.

    ``p`` passing, ``c`` critical, ``w`` warning: ``cp`` alternates, ``ccp``
    fails twice then passes once. ``GET /checks`` counts the health answers
    given since the script was set, so a test can wait for N checks.
    """

    name = "scripted"

    def setup(self, app: Any) -> None:
        self.script: Iterator[HealthStatus] = itertools.repeat(HealthStatus.PASSING)
        self.checks = 0

    def health(self) -> HealthStatus | None:
        self.checks += 1
        return next(self.script)

    @route("/script/<letters>", methods=["POST"])
    async def set_script(self, request: Request, letters: str) -> HTTPResponse:
        self.script = itertools.cycle([_LETTERS[letter] for letter in letters])
        self.checks = 0
        return json({"script": letters})

    @route("/checks")
    async def checks_seen(self, request: Request) -> HTTPResponse:
        return json({"checks": self.checks})
