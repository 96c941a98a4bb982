"""The HTTP/1.1 connection as affinity serves it: bounded in size and time, strict header names.

Both roles are served with :class:`BoundedHttpProtocol` (Sanic's protocol,
two things changed; :class:`BoundedWebSocketProtocol` for an app with a
WebSocket route, :func:`bounded_protocol`) and the limits of their section
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

Both checks ride on work Sanic does anyway, as nearly free as they can be
(they run on every request): the head's start is noted once per request,
and Sanic's own timeout check, run every half timeout, reads it; the names
are checked with one search of the raw head Sanic keeps on the request
rather than one match per parsed name. Nothing is added to Sanic's
``data_received``, which runs on every chunk. The app's config
(:class:`AppConfig`) keeps its settings as plain attributes, so that the
two Sanic reads on every request cost a lookup, not a failed one.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from sanic import Sanic
from sanic.config import Config
from sanic.exceptions import BadRequest
from sanic.http import Http, Stage
from sanic.server.protocols.http_protocol import HttpProtocol
from sanic.server.protocols.websocket_protocol import WebSocketProtocol

_NOT_A_TOKEN = re.compile(rb"\r\n(?![!#$%&'*+\-.^_`|~0-9A-Za-z]++:)")
"""A header line whose name (what comes before its first colon) is not an RFC 9110 token.

Sanic cuts the head into lines at each CRLF and a line's name at its first colon, so
every CRLF of the head starts a header line: one search of the raw head tells whether
every name Sanic read is a token, without visiting the parsed names one by one."""


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


class AppConfig(Config):
    """Sanic's config, its settings also plain attributes of the object.

    Sanic's ``Config`` keeps them as items of itself (a dict) and reaches
    ``config.KEEP_ALIVE`` through ``__getattr__``, after a failed attribute
    lookup has made and dropped an ``AttributeError``: some 4,000
    instructions each time, and Sanic reads ``KEEP_ALIVE`` (for every head)
    and ``REQUEST_BUFFER_SIZE`` (for every chunk received) that way. Every
    change goes through ``update`` (``config.X = ...`` and ``config["X"] =
    ...`` do, as of Sanic 25.12), which copies the settings to attributes
    again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._as_attributes()

    def update(self, *other: Any, **kwargs: Any) -> None:
        super().update(*other, **kwargs)
        self._as_attributes()

    def _as_attributes(self) -> None:
        attributes = vars(self)
        for key, value in self.items():
            if key.isupper():
                attributes[key] = value


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
    """Sanic's HTTP/1.1 state machine, refusing header names that are not tokens, and noting
    when each request head began (``head_started``, read by :class:`BoundedHttpProtocol`)."""

    __slots__ = ("head_started",)

    def __init__(self, protocol: HttpProtocol) -> None:
        super().__init__(protocol)  # type: ignore[no-untyped-call]
        self.head_started = 0.0

    async def http1_request_header(self) -> None:
        # As of Sanic 25.12, this is called in the stage REQUEST once the head's first byte is
        # in, at ``_time`` (set by data_received; for a pipelined head, by the answer before).
        self.head_started = self.protocol._time
        await super().http1_request_header()  # type: ignore[no-untyped-call]
        head: bytes = self.request.head  # the raw head, as Sanic keeps it on the request
        if _NOT_A_TOKEN.search(head) is not None:
            # Raised while reading the head: Sanic answers and closes the connection,
            # and nothing after this head is read as another request.
            name = bad_header_name(head)
            raise BadRequest(f"header name {name!r} is not valid; no blanks are allowed")


def bad_header_name(head: bytes) -> str | None:
    """The first header name of a raw request head that is not a token, as Sanic reads it
    (lower case), or None."""
    bad = _NOT_A_TOKEN.search(head)
    if bad is None:
        return None
    line = head[bad.end() :].split(b"\r\n", 1)[0]
    return line.split(b":", 1)[0].decode(errors="surrogateescape").lower()


class _Bounded:
    """What :class:`BoundedHttpProtocol` and :class:`BoundedWebSocketProtocol` change in
    Sanic's protocols: :class:`CheckedHttp`, and the request timeout counted from the
    request's first byte rather than from the last chunk received."""

    __slots__ = ()
    HTTP_CLASS = CheckedHttp
    _http: CheckedHttp | None
    _time: float

    def check_timeouts(self) -> None:
        # Sanic's check (25.12), run every half of the shortest timeout, counts a stage's time
        # from ``_time``, which data_received moves on with every chunk: while a head is read,
        # it counts from the head's first byte instead. Nothing is added per request or chunk.
        http = self._http
        if http is not None and http.stage is Stage.REQUEST:
            self._time = http.head_started  # type: ignore[misc]  # a slot of the protocol
        super().check_timeouts()  # type: ignore[misc]


class BoundedHttpProtocol(_Bounded, HttpProtocol):
    """Sanic's HTTP/1.1 protocol, bounded (:class:`_Bounded`)."""

    __slots__ = ()


class BoundedWebSocketProtocol(_Bounded, WebSocketProtocol):
    """Sanic's protocol for an app with WebSocket routes, bounded the same way."""

    __slots__ = ()


def bounded_protocol(app: Sanic[Any, Any]) -> type[HttpProtocol]:
    """The protocol to serve ``app`` with: the WebSocket one if it has a WebSocket route,
    as Sanic itself chooses."""
    return BoundedWebSocketProtocol if app.websocket_enabled else BoundedHttpProtocol
