"""The ``affinity`` command's parser tree: common options in any position, usage errors."""

from __future__ import annotations

import argparse
import logging
import re
import shutil
from pathlib import Path

import pytest

from affinity.cli.main import main, parser
from affinity.config import Listen, load
from affinity.web.auth import registration_token

HELLO_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "hello" / "affinity.toml"


@pytest.fixture(autouse=True)
def _restore_root_level() -> object:
    root = logging.getLogger()
    level = root.level
    yield None
    root.setLevel(level)


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "warning", "plugins"],
        ["plugins", "--log-level", "warning"],
    ],
)
def test_log_level_before_or_after_the_command(argv: list[str]) -> None:
    assert main(argv) == 0
    assert logging.getLogger().level == logging.WARNING


def test_log_level_after_a_nested_command() -> None:
    args = parser().parse_args(["keys", "generate", "--out", "k.json", "--log-level", "debug"])
    assert args.log_level == "DEBUG"
    assert args.func.__name__ == "generate"


def test_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--log-level", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "'bogus' is not a log level" in err
    assert "Traceback" not in err


def test_unknown_option_is_reported_by_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: affinity certs")
    assert "unrecognized arguments: --bogus" in err


def test_every_command_is_in_one_tree() -> None:
    commands = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == {
        "referral",
        "serve",
        "dev",
        "certs",
        "keys",
        "request",
        "status",
        "check",
        "plugins",
    }


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["referral", "--class", "os:path"], "--class: 'os:path' is a module, not a subclass of"),
        (
            ["referral", "--class", "affinity.demo:Hello"],
            "--class: 'affinity.demo:Hello' is a class, not a subclass of affinity.ReferralServer",
        ),
        (["serve", "os:sep"], "app: 'os:sep' is a str, not a subclass of affinity.AppServer"),
        (["serve", "no_such_module_here:App"], "app: cannot import 'no_such_module_here'"),
    ],
)
def test_a_class_of_the_wrong_kind_is_refused_before_start(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--config", "unused.toml"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_config_comes_from_the_flag_then_the_environment_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AFFINITY_CONFIG", raising=False)
    assert main(["check"]) == 2
    assert "give --config FILE, set AFFINITY_CONFIG" in capsys.readouterr().err
    shutil.copy(HELLO_CONFIG, tmp_path / "affinity.toml")
    assert main(["check"]) == 2, "its certificates, keys and secrets are not made yet"
    for line in HELLO_CONFIG.read_text().splitlines():  # the set-up its comment gives
        for command in line.removeprefix("#").strip().split(" && "):
            if command.startswith("affinity ") and command.split()[1] in ("certs", "keys"):
                assert main(command.split()[1:]) == 0, command
    capsys.readouterr()
    monkeypatch.delenv("AFFINITY_REGISTRATION_TOKEN", raising=False)
    assert main(["check"]) == 0
    assert capsys.readouterr().out.startswith("affinity.toml: ok (referral, server; 1 service;")
    monkeypatch.setenv("AFFINITY_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert main(["check"]) == 2
    assert "elsewhere.toml: file not found" in capsys.readouterr().err
    assert main(["check", "--config", "affinity.toml"]) == 0


def test_keys_generate_takes_file_like_rotate(tmp_path: Path) -> None:
    assert main(["keys", "generate", "--file", str(tmp_path / "k.json")]) == 0
    assert main(["keys", "rotate", "--file", str(tmp_path / "k.json")]) == 0
    assert main(["keys", "generate", "--out", str(tmp_path / "old-spelling.json")]) == 0
    assert (tmp_path / "old-spelling.json").stat().st_mode & 0o777 == 0o600


def test_keys_admin_token_writes_a_long_random_secret_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "admin-token"
    assert main(["keys", "admin-token", "--file", str(path)]) == 0
    first = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(first.strip()) >= 32 and first.endswith("\n")
    assert first.strip() not in capsys.readouterr().out  # never printed
    assert main(["keys", "admin-token", "--file", str(path)]) == 2
    assert "exists" in capsys.readouterr().err and path.read_text() == first
    assert main(["keys", "admin-token", "--file", str(path), "--force"]) == 0
    assert path.read_text() != first


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ('backend = "consul"\n[registry.options]\nkv-prefix = "a/"', "registry.options.kv-prefix"),
        ('backend = "consul"\n[registry.options]\nkv_prefix = "affinity"', "ending with '/'"),
        ('backend = "embedded"\n[registry.options]\nkv_prefix = "a/"', "takes no options"),
        ('backend = "consull"', "registry.backend"),
    ],
)
def test_check_builds_the_registry_so_its_mistakes_fail_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], registry: str, expected: str
) -> None:
    path = tmp_path / "a.toml"
    path.write_text(f"[registry]\n{registry}\n")
    assert main(["check", "--config", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_keys_registration_token_derives_one_servers_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFFINITY_REGISTRATION_SECRET", raising=False)
    secret, token = tmp_path / "registration-secret", tmp_path / "s1.token"
    assert main(["keys", "registration-secret", "--file", str(secret)]) == 0
    args = ["keys", "registration-token", "--id", "s1", "--secret-file", str(secret)]
    assert main([*args, "--file", str(token)]) == 0
    expected = registration_token(secret.read_text().strip(), "s1")
    assert token.read_text().strip() == expected and expected.startswith("s1.")
    assert token.stat().st_mode & 0o777 == 0o600
    assert main([*args, "--file", str(token)]) == 2, "an existing file is kept"
    bad_id = ["keys", "registration-token", "--id", "bad id", "--secret-file", str(secret)]
    assert main([*bad_id, "--file", str(tmp_path / "x")]) == 2
    (tmp_path / "short").write_text("short\n")
    short = ["keys", "registration-token", "--id", "s1", "--secret-file", str(tmp_path / "short")]
    assert main([*short, "--file", str(tmp_path / "y")]) == 2
    assert main(["keys", "registration-token", "--id", "s1", "--file", str(tmp_path / "z")]) == 2


def test_serve_flags_win_over_the_environment_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "affinity.toml"
    config_file.write_text('[server]\nid = "from-file"\nlisten = "127.0.0.1:8001"\n')
    monkeypatch.setenv("AFFINITY_SERVER_ID", "from-env")
    config = load(config_file)
    assert config.server.id == "from-env"
    flagged = config.with_flags(
        "server", {"id": ("--id", "from-flag"), "listen": ("--listen", "[::1]:9001")}
    )
    assert flagged.server.id == "from-flag"
    assert flagged.server.listen == Listen(host="::1", port=9001)
    assert flagged.server.url == ""  # not given: the file's (none), so derived from --listen
    assert flagged.source_of("server.id") == "the flag --id"
    assert flagged.source_of("server.url") == str(config_file)
    assert config.with_flags("server", {}) is config


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--listen", "bogus"], "the flag --listen: server.listen: expected 'host:port'"),
        (["--listen", "127.0.0.1:99999"], "the flag --listen: server.listen: expected"),
        (["--id", "bad id"], "the flag --id: server.id: server id 'bad id' is not valid"),
        (["--url", "ftp://x.test"], "the flag --url: server.url:"),
    ],
)
def test_a_bad_serve_flag_is_named_before_start(
    flags: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "affinity.demo:Hello", "--config", str(HELLO_CONFIG), "--id", "s1", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # The start-up checks list every error, one line each; the flag's comes first.
    lines = err.splitlines()
    assert "Traceback" not in err and lines[0].startswith(f"affinity serve: error: {expected}"), err
    assert all(line.startswith("affinity serve: error: ") for line in lines), err


def _parsers(
    p: argparse.ArgumentParser, name: str = "affinity"
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree, with its command line."""
    found = [(name, p)]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _parsers(sub, f"{name} {sub_name}")
    return found


MARKUP = re.compile(r"``|:(class|func|meth|mod|attr|data|exc|obj):`|\*\*\w")


@pytest.mark.parametrize(
    ("name", "command"), _parsers(parser()), ids=[n for n, _ in _parsers(parser())]
)
def test_every_option_has_plain_help_and_says_its_default(
    name: str, command: argparse.ArgumentParser
) -> None:
    text = command.format_help()
    assert not MARKUP.search(text), f"{name}: markup in help"
    assert "(default: None)" not in text and "(default: [])" not in text, name
    if name != "affinity":
        assert command.description, f"{name} has no description"
    for action in command._actions:
        if isinstance(
            action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
        ):
            continue
        assert action.help, f"{name} {action.dest}: no help"
        shown = action.default not in (None, False, argparse.SUPPRESS, [])
        if action.option_strings and shown:
            assert "default" in text.split(action.option_strings[-1], 1)[1], (name, action.dest)
