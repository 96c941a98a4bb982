"""The ``affinity`` command's parser tree: common options in any position, usage errors."""

from __future__ import annotations

import logging

import pytest

from affinity.cli.main import main, parser


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
