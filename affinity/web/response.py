"""The response class of affinity's own answers: Sanic's, made and encoded more cheaply.

Sanic encodes a response's headers with ``str.translate`` over a table that
deletes ``\\r``, ``\\n`` and NUL, once per header name and once per value.
For a table given as a dict, ``translate`` looks every character up and
raises and clears a ``KeyError`` for each one it leaves alone, so each header
of an answer costs thousands of instructions: the five of an assign answer
cost it more than the token's signature did (``bench/bench_instructions.py``
measures a request). :class:`Response` sends the headers that affinity sets
on most answers as bytes encoded once (:data:`ENCODED`), skips the
translation for any other string that is printable (no string holding one
of those three characters is), and translates the rest exactly as Sanic
does; it is also made in one step rather than through Sanic's two
constructors. The bytes sent are the same: ``tests/test_response.py`` holds
the two classes side by side, header injection attempts included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

from sanic import HTTPResponse
from sanic.compat import Header
from sanic.helpers import has_message_body
from sanic.response.types import HEADER_TRANSLATION_TABLE

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

    @property
    def processed_headers(self) -> Iterator[tuple[bytes, bytes]]:
        """The headers as ``(name, value)`` bytes pairs, as Sanic's own property makes them."""
        headers = self.headers
        if has_message_body(self.status):  # type: ignore[no-untyped-call]
            headers.setdefault("content-type", self.content_type)
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


__all__ = ["ENCODED", "Response", "exact", "sanitised"]
