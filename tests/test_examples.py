"""The examples work as their READMEs say."""

from __future__ import annotations

import shlex
from importlib import metadata
from pathlib import Path

import pytest

from affinity.cli.main import parser
from affinity.config import load
from affinity.errors import ConfigError
from affinity.models import AssignRequest, Pool, Server
from affinity.plugin.manager import PluginManager

ROOT = Path(__file__).resolve().parent.parent


def test_custom_policy_is_found_through_its_entry_point(tmp_path: Path) -> None:
    names = {ep.name for ep in metadata.entry_points(group="affinity")}
    assert "zone_policy" in names, "pip install -e examples/custom_policy (scripts/setup does)"
    path = tmp_path / "affinity.toml"
    path.write_text('[services.web]\npolicy = "zone"\npolicy_options = { zone = "eu" }\n')
    config = load(path, env={})
    manager = PluginManager(env={})
    assert "zone_policy" in manager.names()
    policy = manager.make_policy("web", config)
    servers = {
        "s1": Server(id="s1", service="web", url="https://s1.example.test", meta={"zone": "us"}),
        "s2": Server(id="s2", service="web", url="https://s2.example.test", meta={"zone": "eu"}),
    }
    pool = Pool.build("web", servers)
    assert policy.choose(pool, AssignRequest(service="web", client_id="c")) == servers["s2"]
    avoid = AssignRequest(service="web", client_id="c", avoid=frozenset({"s2"}))
    assert policy.choose(pool, avoid) == servers["s1"]


def test_custom_policy_options_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "affinity.toml"
    path.write_text('[services.web]\npolicy = "zone"\n')
    with pytest.raises(ConfigError, match="services.web.policy_options.zone"):
        PluginManager(env={}).make_policy("web", load(path, env={}))


def test_hello_config_is_valid() -> None:
    config = load(ROOT / "examples" / "hello" / "affinity.toml", env={})
    assert config.server.id == "s1"
    PluginManager(env={}).make_policy("web", config)


UNITS = sorted((ROOT / "examples").glob("*/systemd/affinity-*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_units_wait_for_readiness_and_reload_with_sighup(unit: Path) -> None:
    """Type=notify (affinity says READY=1 once it serves), reload by SIGHUP, and an
    ExecStart that the command line accepts as written."""
    lines = dict(line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line[:20])
    assert lines["Type"] == "notify"
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    program, *argv = shlex.split(lines["ExecStart"].replace("%i", "s1"))
    assert program.endswith("/bin/affinity")
    args = parser().parse_args(argv)
    assert args.command in {"referral", "serve"}
    assert not any("token" in a.lower() or "secret" in a.lower() for a in argv), argv


def test_every_example_unit_is_checked() -> None:
    assert {u.name for u in UNITS} == {"affinity-referral.service", "affinity-server@.service"}
