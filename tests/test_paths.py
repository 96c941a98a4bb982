"""Path normalisation: every spelling of a path a rule covers must reach the rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity.web.paths import ancestors, normalise_path, path_variants

fast = settings(database=None, deadline=None, max_examples=300)


@pytest.mark.parametrize(
    "raw",
    [
        "/admin",
        "/x/../admin",
        "/%61dmin",
        "//admin",
        "/admin/",
        "/./admin",
        "/../admin",
        "/a/b/../../admin",
        "///admin//",
        "/ADMIN",
        "/%41dmin",
        "/x/%2e%2e/admin",
        "/x/%2E%2E/admin",
        "/x%2f..%2fadmin",
        "/%2561dmin",
    ],
)
def test_spellings_of_admin_normalise_to_admin(raw: str) -> None:
    assert "/admin" in path_variants(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/x/../admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("//admin", "/admin"),
        ("", "/"),
        ("/", "/"),
        ("/..", "/"),
        ("/a/./b/", "/a/b"),
        ("/Admin/Panel", "/admin/panel"),
        ("relative/path", "/relative/path"),
    ],
)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


def test_path_parameters_and_backslashes_are_extra_readings() -> None:
    # Tomcat reads "..;" as ".." and ";x=1" as a parameter; IIS reads "\" as "/".
    assert "/admin" in path_variants("/x/..;/admin")
    assert "/admin" in path_variants("/admin;jsessionid=1")
    assert "/admin/x" in path_variants("/admin\\x")
    # ...while the literal reading (what Sanic routes on) is kept as well.
    assert "/x/..;/admin" in path_variants("/x/..;/admin")


def test_literal_reading_is_kept_when_decoding_would_climb_out() -> None:
    # The core decoded once; a literal "%2e%2e" segment stays under /admin for the app.
    forms = path_variants("/admin/%2e%2e/public")
    assert "/admin/%2e%2e/public" in forms
    assert "/public" in forms


def test_plain_path_has_one_reading() -> None:
    assert path_variants("/v1/assign") == frozenset({"/v1/assign"})


def test_ancestors_longest_first() -> None:
    assert ancestors("/a/b/c") == ["/a/b/c", "/a/b", "/a", "/"]
    assert ancestors("/") == ["/"]


def test_prefix_match_is_segment_wise() -> None:
    assert "/admin" not in ancestors(normalise_path("/administrator"))
    assert "/admin" in ancestors(normalise_path("/admin/users"))


_segment = st.sampled_from(["a", "B", ".", "..", "", "%2e", "%2F", ";x", "\\", "%", "c%41"])


@fast
@given(st.lists(_segment, max_size=8))
def test_normal_form_is_canonical(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    for form in path_variants(path) | {normalise_path(path)}:
        assert form.startswith("/")
        assert form == "/" or not form.endswith("/")
        assert "//" not in form
        parts = form.split("/")[1:]
        assert "." not in parts
        assert ".." not in parts
        # Normalising a normal form again (without decoding) changes nothing.
        assert normalise_path(form, decode=0) == form
