"""The HTTP/1.1 connection as affinity serves it: bounded in size and time, strict header names.

Both roles are served with :class:`BoundedHttpProtocol` (Sanic's protocol,
two things changed) and the limits of their section
(:func:`apply_limits`):

* a request's head must arrive within ``request_timeout`` of its first
  byte. Sanic restarts that timer on every chunk received, so a client
  dripping its headers one byte at a time (slowloris) would hold the
  connection for as long as it likes;
* a header name that is not an RFC 9110 token (``Transfer-Encoding :``,
  a leading blank, a control character) is answered ``400`` and the
  connection closed. Sanic would keep the name with its blank, so
  ``Transfer-Encoding : chunked`` would not count as one, and the body
  would be read as a second request: a request smuggled past a proxy
  that reads the header the other way.

The TLS handshake is bounded by ``handshake_timeout`` (an argument of the
listening socket, :func:`handshake_limit`), a body by ``max_body_size``
(``413 payload_too_large``), an idle keep-alive connection by
``keep_alive_timeout``.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from sanic import Sanic
from sanic.exceptions import BadRequest
from sanic.http import Http, Stage
from sanic.server.protocols.http_protocol import HttpProtocol

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ConnectionSettings(Protocol):
    """The parts of ``[referral]`` / ``[server]`` that bound a connection."""

    @property
    def max_body_size(self) -> int: ...
    @property
    def request_timeout(self) -> float: ...
    @property
    def handshake_timeout(self) -> float: ...
    @property
    def keep_alive_timeout(self) -> float: ...


def apply_limits(app: Sanic[Any, Any], settings: ConnectionSettings) -> None:
    """Put the section's body size and timeouts into the app's Sanic config."""
    app.config.REQUEST_MAX_SIZE = settings.max_body_size
    app.config.REQUEST_TIMEOUT = settings.request_timeout
    app.config.KEEP_ALIVE_TIMEOUT = settings.keep_alive_timeout


def handshake_limit(app: Sanic[Any, Any], settings: ConnectionSettings) -> None:
    """Bound the TLS handshake of every connection the prepared ``app`` accepts.

    Sanic takes the listening socket's arguments only from the settings
    ``prepare`` stored; without this, a connection that never says hello is
    held for the event loop's default of 60 s. Call it for TLS only.
    """
    for info in app.state.server_info:
        info.settings["asyncio_server_kwargs"] = {
            "ssl_handshake_timeout": settings.handshake_timeout
        }


class CheckedHttp(Http):
    """Sanic's HTTP/1.1 state machine, refusing header names that are not tokens."""

    __slots__ = ()

    async def http1_request_header(self) -> None:
        await super().http1_request_header()  # type: ignore[no-untyped-call]
        for name in self.request.headers:
            if _TOKEN.fullmatch(name) is None:
                # Raised while reading the head: Sanic answers and closes the connection,
                # and nothing after this head is read as another request.
                raise BadRequest(f"header name {name!r} is not valid; no blanks are allowed")


class BoundedHttpProtocol(HttpProtocol):
    """Sanic's HTTP/1.1 protocol with :class:`CheckedHttp`, and the request timeout counted
    from the request's first byte rather than from the last chunk received."""

    HTTP_CLASS = CheckedHttp

    def data_received(self, data: bytes) -> None:
        http = getattr(self, "_http", None)
        started = self._time
        super().data_received(data)
        if http is not None and http.stage is Stage.REQUEST:
            self._time = started
