"""The docs say what the code does: every config key documented, every linked page present."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
from affinity_ipfilter import IPFilterOptions
from affinity_ratelimit import RateLimitOptions

from affinity.builtin.consul.options import ConsulOptions
from affinity.builtin.policies import POLICIES
from affinity.config import SECTIONS
from affinity.plugin.manager import PluginManager
from affinity.plugin.options import NoOptions, markdown_table, replace_block

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"

DECLARED: dict[str, type[Any]] = {
    "plugins.ipfilter": IPFilterOptions,
    "plugins.ratelimit": RateLimitOptions,
    "registry.options": ConsulOptions,
    **{
        f"policy.{name}": cls.options_class
        for name, cls in POLICIES.items()
        if cls.options_class is not NoOptions
    },
}
"""Every declared options table the docs list, by the name of its generated block."""


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_config_key_is_documented(section: str) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    part = text.split(f"## `[{section}]`", 1)[1].split("\n## ", 1)[0]
    for field in dataclasses.fields(SECTIONS[section]):
        assert f"| `{field.name}` |" in part, f"{section}.{field.name} missing"


def test_every_declared_option_is_listed_as_declared() -> None:
    """docs/configuration.md holds each table as its declaration renders it.

    When an option changes, regenerate the blocks with
    ``AFFINITY_WRITE_DOCS=1 .venv/bin/python -m pytest tests/test_docs.py``.
    """
    text = CONFIGURATION.read_text(encoding="utf-8")
    expected = text
    for name, cls in DECLARED.items():
        expected = replace_block(expected, name, markdown_table(cls))
    if os.environ.get("AFFINITY_WRITE_DOCS") and expected != text:
        CONFIGURATION.write_text(expected, encoding="utf-8")
        text = expected
    assert text == expected, "docs/configuration.md is out of step; see this test's docstring"


def test_every_table_a_loaded_plugin_declares_is_in_the_docs() -> None:
    declared = PluginManager(env={}).declared_options()
    assert declared, "the first-party plugins are installed (scripts/setup)"
    for name, cls in declared.items():
        assert DECLARED.get(f"plugins.{name}") is cls, f"[plugins.{name}] is not in DECLARED"


def test_every_policy_is_in_the_docs() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8").split("### `policy_options`", 1)[1]
    section = text.split("\n## ", 1)[0]
    for name in POLICIES:
        assert re.search(rf"`(policy = \")?{name}\"?`", section), f"policy {name} missing"


@pytest.mark.parametrize(
    "page",
    [
        "README.md",
        "CONTRIBUTING.md",
        *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))),
    ],
)
def test_relative_links_resolve(page: str) -> None:
    path = ROOT / page
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{page} links to missing {target}"


def test_quick_start_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line for line in block.splitlines()[1:] if line.strip()]
    assert commands == [c for c in commands if c.startswith("./scripts/")]
    assert len(commands) == 2
    # CI runs the README's test command once (scripts/test-browser only installs, before it).
    assert len(re.findall(r"scripts/test(?![\w-])", (ROOT / ".ci" / "run").read_text())) == 1


def test_quick_start_shows_the_installed_path() -> None:
    """The pip path beside the clone's; tests/test_install.py runs it from an empty directory."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = [b.strip().splitlines() for b in section.split("```")[1::2]]
    assert ["pip install affinity-lb", "affinity dev"] in blocks
