"""The app server of the test bed: ``GET /blob`` answers 1 MiB, the download each client repeats."""

from __future__ import annotations

from sanic import HTTPResponse, Request

from affinity import AppServer, route

BLOB_SIZE = 1024 * 1024
_BLOB = bytes(range(256)) * (BLOB_SIZE // 256)


class Blob(AppServer):
    name = "blob"

    @route("/blob")
    async def blob(self, request: Request) -> HTTPResponse:
        return HTTPResponse(_BLOB, content_type="application/octet-stream")
