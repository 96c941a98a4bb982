"""docs/client.md names every option, event, error and CLI flag there is, and nothing else.

A reference page that falls behind the code is worse than none; these checks
fail when an option is added, renamed or dropped without the page following.
"""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

import affinity.client
from affinity.cli import request as request_command
from affinity.client.sync import ClientOptions, RequestOptions

DOCS = (Path(__file__).parents[2] / "docs" / "client.md").read_text()


def section(title: str) -> str:
    """The text of the section ``## title`` up to the next ``## ``."""
    start = DOCS.index(f"\n## {title}\n")
    end = DOCS.find("\n## ", start + 1)
    return DOCS[start : end if end != -1 else None]


def first_column(text: str) -> set[str]:
    """The backquoted names in the first column of the tables in ``text``."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_every_client_option_is_documented() -> None:
    documented = {
        name for n in first_column(section("Options and defaults")) for name in n.split(", ")
    }
    assert documented == set(ClientOptions.__annotations__)


def test_every_request_option_is_documented() -> None:
    surface = section("Surface")
    for name in RequestOptions.__annotations__:
        assert f"`{name}`" in surface, name


def test_every_event_is_documented() -> None:
    events = {cls.__name__ for cls in typing.get_args(affinity.client.Event)}
    assert first_column(section("Events")) == events


def test_every_error_is_documented() -> None:
    errors = {"AllAttemptsFailed", "NotRetried", "ReferralRefused", "ClientError"}
    assert errors <= set(affinity.client.__all__)
    for name in errors:
        assert f"`{name}`" in section("Failover rules") or f"`affinity.{name}`" in DOCS, name


def test_every_cli_flag_is_documented() -> None:
    parser = argparse.ArgumentParser()
    request_command.configure(parser)
    flags = {
        flag
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }
    documented = " ".join(first_column(section("`affinity request`")))
    for flag in flags:
        assert flag in documented, flag
