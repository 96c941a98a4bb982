"""The README's examples are real: its TOML compiles, its JSON document passes the check."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

from affinity_ipfilter import IPFilter, IPFilterOptions
from affinity_ipfilter.networks import parse_address

from affinity.models import RequestInfo, SharedSettings
from affinity.plugin.options import markdown_table, replace_block
from affinity.web.paths import path_variants

README = Path(__file__).parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_toml_example_compiles_and_behaves_as_described() -> None:
    (toml,) = blocks("toml")
    f = IPFilter()
    f.configure_table(tomllib.loads(toml)["plugins"]["ipfilter"], source="README.md")

    def rule(ip: str, path: str) -> str | None:
        answer = f.reject(RequestInfo(role="server", method="GET", path=path, client_ip=ip))
        return None if answer is None else answer.rule

    assert rule("10.1.1.1", "/") is None
    assert rule("10.66.1.1", "/") == "ipfilter.deny[0]"
    assert rule("10.1.1.1", "/admin") == "ipfilter.paths[0].allow"
    assert rule("10.9.1.1", "/admin") is None
    assert rule("192.0.2.1", "/") == "ipfilter.allow"


def test_json_document_passes_the_check_and_compiles_as_described() -> None:
    (document,) = blocks("json")[:1]
    rules = IPFilter().compile_settings(
        SharedSettings(name="ipfilter", version=1, value=json.loads(document))
    )

    def rule(ip: str, path: str) -> str | None:
        return rules.check("server", parse_address(ip), lambda: path_variants(path))

    assert rule("198.51.100.7", "/") == "ipfilter.settings.deny[0]"
    assert rule("10.1.1.1", "/admin/x") == "ipfilter.settings.paths[0].allow"
    assert rule("10.9.1.1", "/admin/x") is None
    assert rule("10.1.1.1", "/") is None


def test_options_table_is_the_declaration() -> None:
    """The README's table is generated from ``IPFilterOptions``; regenerate it with
    ``AFFINITY_WRITE_DOCS=1 pytest plugins/affinity-ipfilter/tests/test_ipfilter_readme.py``."""
    text = README.read_text(encoding="utf-8")
    expected = replace_block(text, "plugins.ipfilter", markdown_table(IPFilterOptions))
    if os.environ.get("AFFINITY_WRITE_DOCS") and expected != text:
        README.write_text(expected, encoding="utf-8")
        text = expected
    assert text == expected, "README.md is out of step with the options; see this test"
