"""How affinity's processes encode response headers, and the response class of its own answers.

Sanic encodes a response's headers (``processed_headers``) with
``str.translate`` over a table that deletes ``\\r``, ``\\n`` and NUL, once per
header name and once per value, each through a call of its own. For a table
given as a dict, ``translate`` looks every character up and raises and
clears a ``KeyError`` for each one it leaves alone, so each header of an
answer costs thousands of instructions. :func:`encoded_headers` makes the
same bytes more cheaply: the headers that affinity sets on most answers are
bytes encoded once (:data:`ENCODED`), any other printable string (no string
holding one of those three characters is) is encoded as it is, and the rest
is translated exactly as Sanic does. :func:`quick_header_encoding` puts it
in place of Sanic's property for every answer of the process, the app's own
handlers' included. :class:`Response`, the class of affinity's own answers,
is also made in one step rather than through Sanic's two constructors.
``tests/test_response.py`` holds :func:`encoded_headers` and Sanic's own
property (:data:`SANICS_OWN`) side by side, header injection attempts included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

from sanic import HTTPResponse
from sanic.compat import Header
from sanic.helpers import has_message_body
from sanic.response.types import HEADER_TRANSLATION_TABLE, BaseHTTPResponse

SANICS_OWN: Final = vars(BaseHTTPResponse)["processed_headers"]
"""Sanic's own ``processed_headers`` property, as it was before :func:`quick_header_encoding`
(this module is the only one that replaces it): the reference of the tests."""

ENCODED: Final[dict[tuple[str, str], tuple[bytes, bytes]]] = {
    (name, value): (name.encode("ascii"), value.encode("ascii"))
    for name, value in (
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("content-type", "application/json"),
        ("connection", "keep-alive"),
    )
}
"""Headers affinity sends on most answers (``no-store``, ``nosniff``, JSON, keep-alive), as
``(name, value)`` and the bytes they encode to; read only."""


def sanitised(text: str) -> str:
    """A header name or value as Sanic sends it: ``\\r``, ``\\n`` and NUL removed.

    A printable string holds none of them and is returned as it is, without
    the translation (:func:`exact`: no character the table changes is printable).
    """
    return text if text.isprintable() else text.translate(HEADER_TRANSLATION_TABLE)


def exact() -> bool:
    """Whether :func:`sanitised` gives what Sanic's table gives for every string: every
    character the table changes is one ``str.isprintable`` refuses."""
    return all(
        not chr(code).isprintable() for code, to in HEADER_TRANSLATION_TABLE.items() if to != code
    )


def encoded_headers(response: BaseHTTPResponse) -> Iterator[tuple[bytes, bytes]]:
    """A response's headers as ``(name, value)`` bytes pairs: what Sanic's own
    ``processed_headers`` makes, with fewer calls and no translation of a printable string."""
    headers = response.headers
    if has_message_body(response.status):  # type: ignore[no-untyped-call]
        headers.setdefault("content-type", response.content_type)
    encoded = []
    known = ENCODED.get
    for name, value in headers.items():
        text = f"{value}"
        pair = known((name, text))
        if pair is None:
            pair = (
                sanitised(name).encode("ascii"),
                sanitised(text).encode(errors="surrogateescape"),
            )
        encoded.append(pair)
    return iter(encoded)


_ENCODED_HEADERS = property(encoded_headers)


def quick_header_encoding() -> None:
    """Encode every response's headers with :func:`encoded_headers` instead of Sanic's property.

    Process-wide and idempotent. With another Sanic (no such property, or a
    table that changes a printable character: :func:`exact`), nothing is done.
    """
    if isinstance(SANICS_OWN, property) and exact():
        BaseHTTPResponse.processed_headers = _ENCODED_HEADERS  # type: ignore[assignment,method-assign]


class Response(HTTPResponse):
    """:class:`sanic.HTTPResponse` whose headers encode without a translation per string."""

    __slots__ = ()

    def __init__(
        self,
        body: bytes | None = None,
        status: int = 200,
        headers: Header | Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        # What HTTPResponse.__init__ and its base set, without the two calls and the empty
        # Header the base makes only for it to be replaced.
        self.asgi = False
        self.body = b"" if body is None else body
        self.content_type = content_type
        self.stream = None
        self.status = status
        self.headers = Header(headers or {})
        self._cookies = None

    processed_headers = property(encoded_headers)


__all__ = [
    "ENCODED",
    "SANICS_OWN",
    "Response",
    "encoded_headers",
    "exact",
    "quick_header_encoding",
    "sanitised",
]
