"""``affinity plugins`` and ``affinity check``: what is loaded, and the file checked against it."""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path

import pytest

from affinity.cli.main import main


@pytest.fixture(autouse=True)
def _restore_root_level() -> object:
    root = logging.getLogger()
    level = root.level
    yield None
    root.setLevel(level)


def test_plugins_lists_name_distribution_version_and_hooks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFFINITY_DISABLE_PLUGINS", raising=False)
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "distribution", "version", "hooks"]
    rows = {line.split()[0]: line.split(maxsplit=3) for line in lines[1:]}
    version = metadata.version("affinity-ratelimit")
    _, dist, shown, hooks = rows["ratelimit"]
    assert (dist, shown) == ("affinity-ratelimit", version)
    assert "reject_request" in hooks and "declare_options" in hooks
    assert hooks.endswith("[plugins.ratelimit]")
    assert rows["affinity.builtin.policies"][1:3] == [
        "affinity-lb",
        metadata.version("affinity-lb"),
    ]


def test_plugins_as_json_and_blocked_ones(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFFINITY_DISABLE_PLUGINS", "ratelimit")
    assert main(["plugins", "--json"]) == 0
    found = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert "ratelimit" not in found
    assert found["ipfilter"]["distribution"] == "affinity-ipfilter"
    assert "affinity_reject_request" in found["ipfilter"]["hooks"]
    assert found["ipfilter"]["options"] == "plugins.ipfilter"
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "blocked (AFFINITY_DISABLE_PLUGINS): ratelimit"


def test_a_blocked_name_that_is_no_plugin_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AFFINITY_DISABLE_PLUGINS", "ratelimt")
    with caplog.at_level(logging.WARNING, "affinity.plugins"):
        assert main(["plugins", "--json"]) == 0
    assert "AFFINITY_DISABLE_PLUGINS names 'ratelimt', which is no plugin here" in caplog.text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[plugins.ratelimt]\nrate = 5\n", "plugins.ratelimt: no loaded plugin has this table"),
        ("[plugins.ratelimit]\nrate = 0\n", "plugins.ratelimit.rate: expected a rate in (0, 1e9]"),
        ("[plugins.ipfilter]\nalow = []\n", "plugins.ipfilter.alow: unknown key"),
    ],
)
def test_check_checks_plugin_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    words: str,
) -> None:
    monkeypatch.delenv("AFFINITY_DISABLE_PLUGINS", raising=False)
    path = tmp_path / "affinity.toml"
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {words}" in err
    assert "Traceback" not in err


def test_check_says_which_plugin_tables_it_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFFINITY_DISABLE_PLUGINS", raising=False)
    path = tmp_path / "affinity.toml"
    assert main(["keys", "generate", "--file", str(tmp_path / "keys.json")]) == 0
    path.write_text(
        '[referral]\ninsecure_http = true\n[tokens]\nkeys_file = "keys.json"\n'
        "[plugins.ratelimit]\nrate = 5\n"
    )
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "options of [plugins.ipfilter], [plugins.ratelimit]" in out
