"""The baseline: a minimal Sanic route answering a small JSON body, served like affinity's apps."""

from __future__ import annotations

import sys

import orjson
from sanic import HTTPResponse, Request, Sanic

app: Sanic = Sanic("minimal")  # type: ignore[type-arg]
app.config.ACCESS_LOG = False


@app.get("/")
async def index(request: Request) -> HTTPResponse:
    body = orjson.dumps({"server": {"id": "s1", "url": "https://s1.example"}, "sticky": False})
    return HTTPResponse(body, content_type="application/json")


if __name__ == "__main__":
    app.run(
        host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False, motd=False
    )
