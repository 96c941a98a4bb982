from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from affinity import hookimpl
from affinity.config import load
from affinity.errors import ConfigError, PluginError
from affinity.models import AssignRequest, Pool, Server
from affinity.plugin.manager import DEFAULT_PLUGINS, PluginManager
from affinity.plugin.policy import Policy


class Fixed(Policy):
    name = "fixed"

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        return pool.assignable[-1] if pool.assignable else None


class FixedPlugin:
    @hookimpl
    def affinity_make_policy(self, name: str, options: Mapping[str, Any]) -> Policy | None:
        return Fixed(options) if name in ("fixed", "round_robin") else None


def config_with(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "affinity.toml"
    path.write_text(text)
    return load(path, env={})


def test_builtins_are_registered_first() -> None:
    pm = PluginManager(autoload=False, env={})
    assert pm.names()[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)


def test_unknown_policy_is_a_config_error_naming_key_and_file(tmp_path: Path) -> None:
    config = config_with(tmp_path, '[services.web]\npolicy = "fastest"\n')
    with pytest.raises(ConfigError) as info:
        PluginManager(autoload=False, env={}).make_policy("web", config)
    assert info.value.key == "services.web.policy"
    assert str(tmp_path / "affinity.toml") in str(info.value)
    assert "'fastest'" in str(info.value)


def test_a_plugin_overrides_a_builtin_policy(tmp_path: Path) -> None:
    config = config_with(tmp_path, '[services.web]\npolicy = "round_robin"\n')
    pm = PluginManager(autoload=False, env={}, plugins=[FixedPlugin()])
    assert isinstance(pm.make_policy("web", config), Fixed)


def test_plugins_named_in_the_environment_are_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = types.ModuleType("affinity_test_envplugin")
    module.affinity_make_policy = FixedPlugin().affinity_make_policy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "affinity_test_envplugin", module)
    pm = PluginManager(autoload=False, env={"AFFINITY_PLUGINS": "affinity_test_envplugin"})
    config = config_with(tmp_path, '[services.web]\npolicy = "fixed"\n')
    assert isinstance(pm.make_policy("web", config), Fixed)


def test_a_plugin_that_fails_to_import_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = metadata.EntryPoint(name="broken", value="affinity_no_such_module", group="affinity")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [broken])
    with pytest.raises(PluginError, match="'broken'.*affinity_no_such_module"):
        PluginManager(autoload=True, env={})


def test_autoload_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = metadata.EntryPoint(name="broken", value="affinity_no_such_module", group="affinity")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [broken])
    pm = PluginManager(env={"AFFINITY_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "broken" not in pm.names()


def test_env_plugin_that_fails_to_import() -> None:
    with pytest.raises(PluginError, match="'affinity_nope'"):
        PluginManager(autoload=False, env={"AFFINITY_PLUGINS": "affinity_nope"})


def test_unknown_registry_and_health_source(tmp_path: Path) -> None:
    pm = PluginManager(autoload=False, env={})
    config = config_with(tmp_path, '[registry]\nbackend = "zookeeper"\n[health]\nsources = ["x"]\n')
    with pytest.raises(ConfigError, match="registry.backend"):
        pm.make_registry(config)
    with pytest.raises(ConfigError, match=r"health.sources\[0\]"):
        pm.make_health_sources(config)


def test_report_load_merges_every_plugin() -> None:
    class A:
        @hookimpl
        def affinity_report_load(self, server_id: str) -> Mapping[str, float]:
            return {"queue": 3.0, "cpu": 0.5}

    class B:
        @hookimpl
        def affinity_report_load(self, server_id: str) -> Mapping[str, float] | None:
            return {"cpu": 0.9}

    pm = PluginManager(autoload=False, env={}, plugins=[A(), B()])
    assert pm.report_load("s1") == {"queue": 3.0, "cpu": 0.9}


def test_invalid_plugin_is_a_plugin_error() -> None:
    class Bad:
        @hookimpl
        def affinity_reject_request(self, request: object, extra: object) -> None:
            return None

    with pytest.raises(PluginError, match="invalid"):
        PluginManager(autoload=False, env={}, plugins=[Bad()])
