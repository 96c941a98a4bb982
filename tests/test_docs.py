"""The docs say what the code does: every config key documented, every linked page present."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from affinity.config import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_config_key_is_documented(section: str) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    part = text.split(f"## `[{section}]`", 1)[1].split("\n## ", 1)[0]
    for field in dataclasses.fields(SECTIONS[section]):
        assert f"| `{field.name}` |" in part, f"{section}.{field.name} missing"


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
    assert (ROOT / ".ci" / "run").read_text().count("scripts/test") == 1
