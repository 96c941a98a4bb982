"""An app server whose side effects outlive it, for the client's live tests.

A POST that reached a server which then died must not be executed twice; to
prove it, the count of executions has to survive the server. Every server of
a deployment appends one line per executed POST to the same journal file
(``JOURNAL`` in the environment), so the test reads, after the fact, how many
times and where a request ran, whichever servers died on the way.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from sanic import HTTPResponse, Request
from sanic.response import json

from affinity import AppServer, route


class Journal(AppServer):
    """``/whoami``; ``POST /record`` writes a journal line; ``POST /crash`` writes one and dies.

    ``GET /once/<how>/<marker>`` writes a line too; on the first server to see
    the marker it then dies (``die``) or never answers (``stall``), and on the
    next one it answers: a GET that fails in flight and must be sent again.
    """

    name = "journal"

    def setup(self, app: Any) -> None:
        self.journal = Path(os.environ["JOURNAL"])

    def _record(self, request: Request, marker: str | None = None) -> bool:
        """Write the journal line; True when it is the first line for this marker."""
        marker = request.body.decode() if marker is None else marker
        seen = self.journal.read_text() if self.journal.exists() else ""
        # Closed (so in the kernel's hands) before anything else happens: os._exit keeps it.
        with self.journal.open("a") as out:
            out.write(f"{self.server_id} {marker}\n")
        return f" {marker}\n" not in seen

    @route("/whoami")
    async def whoami(self, request: Request) -> HTTPResponse:
        return json({"server": self.server_id, "client": request.ctx.client_id})

    @route("/record", methods=["POST"])
    async def record(self, request: Request) -> HTTPResponse:
        self._record(request)
        return json({"server": self.server_id, "recorded": True})

    @route("/crash", methods=["POST"])
    async def crash(self, request: Request) -> HTTPResponse:
        """Executes the request, then dies before answering: the worst moment for a client."""
        self._record(request)
        os._exit(1)

    @route("/once/<how>/<marker>")
    async def once(self, request: Request, how: str, marker: str) -> HTTPResponse:
        if self._record(request, marker):
            if how == "die":
                os._exit(1)
            await asyncio.Event().wait()  # "stall": the connection stays open, silent
        return json({"server": self.server_id, "marker": marker})
