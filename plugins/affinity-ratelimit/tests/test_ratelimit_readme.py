"""The README's examples are real: its TOML compiles, its JSON document passes the check."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
from affinity_ratelimit import RateLimiter, RateLimitOptions

from affinity.errors import ConfigError
from affinity.models import RequestInfo, SharedSettings
from affinity.plugin.options import markdown_table, replace_block

README = Path(__file__).parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def make() -> RateLimiter:
    (toml,) = blocks("toml")
    limiter = RateLimiter(clock=lambda: 0.0)
    limiter.configure_table(tomllib.loads(toml)["plugins"]["ratelimit"], source="README.md")
    return limiter


def test_toml_example_compiles_and_behaves_as_described() -> None:
    limiter = make()

    def admitted(path: str, role: str, n: int = 100) -> int:
        request = RequestInfo(role=role, method="GET", path=path, client_ip="192.0.2.1")
        return sum(limiter.reject(request) is None for _ in range(n))

    assert admitted("/v1/assign", "referral") == 5
    assert admitted("/admin/x", "server") == 3
    assert admitted("/v1/assign", "server") == 10


def test_sample_answer_matches_the_readme() -> None:
    limiter = make()
    request = RequestInfo(role="server", method="GET", path="/", client_ip="192.0.2.1")
    for _ in range(10):
        limiter.reject(request)
    answer = limiter.reject(request)
    assert answer is not None
    text = README.read_text(encoding="utf-8")
    for name, value in answer.headers.items():
        assert f"{name}: {value}\n" in text
    assert json.dumps({"error": answer.error, "detail": answer.detail}) in text


def test_json_document_passes_the_check_and_compiles_as_described() -> None:
    """Laid over the README's file key by key; its ``limits`` replace the file's whole, and
    it only tightens them (the file does not allow loosening)."""
    (document,) = blocks("json")[:1]
    settings = SharedSettings(name="ratelimit", version=1, value=json.loads(document))
    policy = make().compile_settings(settings)
    assign = policy.select("referral", "/v1/assign")
    assert assign is not None
    assert (assign.name, assign.rate, assign.burst, assign.key) == ("assign", 1.0, 1, "ip")
    assert assign.roles == {"referral"}
    admin = policy.select("server", "/admin/x")
    assert admin is not None and (admin.name, admin.rate, admin.burst) == ("admin", 0.5, 2)
    default = policy.select("server", "/other")
    assert default is not None
    assert (default.name, default.rate, default.burst) == ("default", 20.0, 10)  # burst: file's
    assert default.key == "client_or_ip"  # kept from the file
    assert policy.headers == "draft-08"
    loose = SharedSettings(name="ratelimit", version=2, value={"rate": 20, "burst": 40})
    with pytest.raises(ConfigError, match="would loosen"):
        make().compile_settings(loose)


def test_options_table_is_the_declaration() -> None:
    """The README's table is generated from ``RateLimitOptions``; regenerate it with
    ``AFFINITY_WRITE_DOCS=1 pytest plugins/affinity-ratelimit/tests/test_ratelimit_readme.py``."""
    text = README.read_text(encoding="utf-8")
    expected = replace_block(text, "plugins.ratelimit", markdown_table(RateLimitOptions))
    if os.environ.get("AFFINITY_WRITE_DOCS") and expected != text:
        README.write_text(expected, encoding="utf-8")
        text = expected
    assert text == expected, "README.md is out of step with the options; see this test"
