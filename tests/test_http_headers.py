"""affinity's header sanitising: the same text as Sanic's own, on every character."""

from __future__ import annotations

import random
import sys

import pytest
from sanic.response import types as sanic_response_types

from affinity.web.response import SANICS_OWN, exact, quick_header_encoding, sanitised

SANIC_TABLE = str.maketrans("", "", "\r\n\x00")
"""The table Sanic 25.12 ships: CR, LF and NUL removed, every other character kept."""


def sanics_own(text: str) -> str:
    """What Sanic 25.12's ``_sanitize_header_value`` returns."""
    return text.translate(SANIC_TABLE)


def test_the_table_sanic_ships_is_the_one_the_quick_path_is_exact_for() -> None:
    assert sanic_response_types.HEADER_TRANSLATION_TABLE == SANIC_TABLE
    assert exact()


def test_every_character_is_sanitised_as_sanic_does() -> None:
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        assert sanitised(char) == sanics_own(char), hex(code)
    wide = "".join(chr(c) for c in range(0, sys.maxunicode + 1, 97) if not 0xD800 <= c <= 0xDFFF)
    assert sanitised(wide) == sanics_own(wide)


def test_random_strings_are_sanitised_as_sanic_does() -> None:
    rng = random.Random(20261130)
    alphabet = ["a", "Z", " ", "\t", "\r", "\n", "\x00", "\x7f", "é", "\u2028", ":", "\udcff"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        assert sanitised(text) == sanics_own(text), repr(text)


def test_a_table_that_changes_a_printable_character_leaves_sanic_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = sanic_response_types.BaseHTTPResponse
    monkeypatch.setattr(base, "processed_headers", SANICS_OWN)
    table = str.maketrans("", "", "\r\n\x00;")
    monkeypatch.setattr("affinity.web.response.HEADER_TRANSLATION_TABLE", table)
    assert not exact()
    quick_header_encoding()
    assert vars(base)["processed_headers"] is SANICS_OWN
