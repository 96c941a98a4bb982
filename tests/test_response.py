"""affinity's header encoding makes the very bytes Sanic's own property makes, for Response and
for any Sanic answer once it is in place."""

from __future__ import annotations

from typing import Any

import pytest
from sanic import HTTPResponse
from sanic.headers import format_http1_response

from affinity.web.http import NO_STORE, json_response
from affinity.web.response import (
    ENCODED,
    SANICS_OWN,
    Response,
    encoded_headers,
    quick_header_encoding,
)

HEADER_SETS: list[dict[str, Any]] = [
    {},
    dict(NO_STORE),
    {"Location": "https://s1.example:8443/a%20b?c=d", **NO_STORE},
    {"X-Injected": "a\r\nSet-Cookie: evil=1"},  # header injection: CR and LF dropped
    {"X-Nul": "a\x00b", "X-Lf": "\n", "X-Cr": "\r"},
    {"X-Name\r\nEvil": "value"},  # in a name too
    {"X-Tab": "a\tb"},  # not printable, kept by both
    {"X-Text": "caf\u00e9 \u2603"},  # non-ASCII value, UTF-8 as Sanic sends it
    {"X-Surrogate": "\udcff\udc80"},  # surrogateescape'd bytes go out as they came in
    {"Retry-After": 3, "X-Float": 1.5},  # not strings: formatted first
    {"X-Empty": ""},
    {"connection": "close", "content-type": "text/plain"},
    {"Cache-Control": "no-store\r\n"},  # a known name with an unknown value
]


def sanics_own(response: HTTPResponse) -> list[tuple[bytes, bytes]]:
    """The pairs Sanic's own ``processed_headers`` makes, whatever is in place now."""
    return list(SANICS_OWN.fget(response))


def _wire(response: HTTPResponse, encode: Any = encoded_headers) -> bytes:
    # What Sanic's HTTP/1.1 writer adds before it encodes (http1_response_header).
    response.headers["content-length"] = len(response.body or b"")
    response.headers["connection"] = "keep-alive"
    return format_http1_response(response.status, encode(response))


@pytest.mark.parametrize("headers", HEADER_SETS)
@pytest.mark.parametrize("status", [200, 204, 304, 400, 503])
@pytest.mark.parametrize("content_type", ["application/json", "text/plain; charset=utf-8", None])
def test_headers_encode_as_sanic_encodes_them(
    headers: dict[str, Any], status: int, content_type: str | None
) -> None:
    ours = Response(b"{}", status=status, headers=headers, content_type=content_type)
    sanic = HTTPResponse(b"{}", status=status, headers=headers, content_type=content_type)
    assert list(ours.processed_headers) == sanics_own(sanic)
    ours = Response(b"{}", status=status, headers=headers, content_type=content_type)
    sanic = HTTPResponse(b"{}", status=status, headers=headers, content_type=content_type)
    assert _wire(ours) == _wire(sanic, SANICS_OWN.fget)
    theirs = HTTPResponse(b"{}", status=status, headers=headers, content_type=content_type)
    sanic = HTTPResponse(b"{}", status=status, headers=headers, content_type=content_type)
    assert _wire(theirs) == _wire(sanic, SANICS_OWN.fget)  # any answer, once in place


def test_injection_never_reaches_the_wire() -> None:
    response = Response(b"", headers={"X-Injected": "a\r\nSet-Cookie: evil=1"})
    wire = _wire(response)
    assert b"\r\nSet-Cookie" not in wire
    assert b"X-Injected: aSet-Cookie: evil=1\r\n" in wire


def test_a_name_that_is_not_ascii_is_refused_as_sanic_refuses_it() -> None:
    with pytest.raises(UnicodeEncodeError):
        sanics_own(HTTPResponse(b"", headers={"X-\u00e9": "v"}))
    with pytest.raises(UnicodeEncodeError):
        list(Response(b"", headers={"X-\u00e9": "v"}).processed_headers)


def test_the_known_headers_are_what_sanic_encodes_them_to() -> None:
    for (name, value), pair in ENCODED.items():
        assert [pair] == sanics_own(HTTPResponse(headers={name: value}, status=204))


def test_json_answers_use_it() -> None:
    response = json_response({"a": 1}, headers=NO_STORE)
    assert type(response) is Response
    assert list(response.processed_headers) == [
        (b"Cache-Control", b"no-store"),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"content-type", b"application/json"),
    ]


@pytest.mark.parametrize("body", [b"{}", b"", None])
@pytest.mark.parametrize("headers", [None, {}, dict(NO_STORE), {"Location": "/x"}])
def test_it_is_made_as_sanic_makes_its_own(body: bytes | None, headers: Any) -> None:
    ours = Response(body, 307, headers, "text/plain")
    sanic = HTTPResponse(body, 307, headers, "text/plain")
    assert type(ours.headers) is type(sanic.headers)
    assert list(ours.headers.items()) == list(sanic.headers.items())
    assert _state(ours) == _state(sanic)


def _state(response: HTTPResponse) -> dict[str, Any]:
    """Every slot a response's classes declare, but its headers (compared apart)."""
    names = {n for cls in type(response).__mro__ for n in getattr(cls, "__slots__", ())}
    return {n: getattr(response, n, "unset") for n in sorted(names - {"headers"})}


def test_it_takes_the_place_of_sanics_own_for_every_answer_idempotently() -> None:
    quick_header_encoding()
    quick_header_encoding()
    response = HTTPResponse(b"{}", headers={"X-Injected": "a\r\nSet-Cookie: b\x00"})
    assert type(response).processed_headers.fget is encoded_headers  # type: ignore[attr-defined]
    assert list(response.processed_headers) == sanics_own(response)
    assert (b"X-Injected", b"aSet-Cookie: b") in list(response.processed_headers)
