"""Sanic's header sanitising with the table quick_header_sanitising extends: the same text."""

from __future__ import annotations

import sys

from sanic.response import HTTPResponse
from sanic.response import types as sanic_response_types

from affinity.web.http import quick_header_sanitising

SANIC_TABLE = str.maketrans("", "", "\r\n\x00")
"""The table Sanic 25.12 ships: CR, LF and NUL removed, every other character kept."""


def test_the_extended_table_translates_every_character_as_sanics_own() -> None:
    quick_header_sanitising()
    table = sanic_response_types.HEADER_TRANSLATION_TABLE
    assert all(code in table for code in range(128))  # no lookup of an ASCII character fails
    ascii_text = "".join(map(chr, range(128)))
    assert ascii_text.translate(table) == ascii_text.translate(SANIC_TABLE)
    wide = "".join(chr(c) for c in range(0, sys.maxunicode + 1, 97) if not 0xD800 <= c <= 0xDFFF)
    assert wide.translate(table) == wide.translate(SANIC_TABLE)
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        assert char.translate(table) == char.translate(SANIC_TABLE), hex(code)


def test_it_is_idempotent_and_a_response_still_loses_cr_lf_and_nul() -> None:
    quick_header_sanitising()
    quick_header_sanitising()
    response = HTTPResponse(b"", headers={"X-Injected": "a\r\nSet-Cookie: b\x00"})
    assert dict(response.processed_headers)[b"X-Injected"] == b"aSet-Cookie: b"
