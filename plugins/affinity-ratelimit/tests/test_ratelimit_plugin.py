"""The module as a plugin: entry point, hook signatures against the contract, hook calls."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import affinity_ratelimit
import pluggy
import pytest

from affinity.errors import ConfigError
from affinity.models import RequestInfo, SharedSettings
from affinity.plugin import spec as hookspecs


@dataclass
class FakeConfig:
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "affinity.toml"

    def plugin_options(self, name: str) -> Mapping[str, Any]:
        return self.plugins.get(name, {})


@pytest.fixture
def pm() -> Iterator[pluggy.PluginManager]:
    manager = pluggy.PluginManager("affinity")
    manager.add_hookspecs(hookspecs)
    manager.register(affinity_ratelimit, name="ratelimit")  # validates against the hookspecs
    yield manager
    affinity_ratelimit.STATE.configure(FakeConfig())  # leave the process-wide state empty


def test_entry_point_names_the_module() -> None:
    eps = importlib.metadata.entry_points(group="affinity", name="ratelimit")
    assert [ep.value for ep in eps] == ["affinity_ratelimit"]
    assert next(iter(eps)).load() is affinity_ratelimit


def test_hooks_through_pluggy(pm: pluggy.PluginManager) -> None:
    pm.hook.affinity_configure(config=FakeConfig({"ratelimit": {"rate": 0.001, "burst": 2}}))
    request = RequestInfo(role="referral", method="GET", path="/v1/assign", client_ip="192.0.2.9")
    assert pm.hook.affinity_reject_request(request=request) is None
    assert pm.hook.affinity_reject_request(request=request) is None
    answer = pm.hook.affinity_reject_request(request=request)
    assert answer.status == 429
    assert answer.retry_after >= 1
    assert answer.rule == "ratelimit.default"

    other = SharedSettings(name="ipfilter", version=9, value={"rate": "not a number"})
    pm.hook.affinity_check_settings(settings=other)  # not ours: ignored
    pm.hook.affinity_settings_changed(settings=other)
    assert affinity_ratelimit.STATE.version == 0

    bad = SharedSettings(name="ratelimit", version=1, value={"rate": -1})
    with pytest.raises(ConfigError):
        pm.hook.affinity_check_settings(settings=bad)

    good = SharedSettings(name="ratelimit", version=2, value={"rate": None, "burst": None})
    pm.hook.affinity_check_settings(settings=good)
    pm.hook.affinity_settings_changed(settings=good)
    assert affinity_ratelimit.STATE.version == 2
    assert pm.hook.affinity_reject_request(request=request) is None
    assert affinity_ratelimit.STATE.counters() == {"ratelimit.default": 1}
    assert pm.hook.affinity_report_counters() == [{"ratelimit.default": 1}]


def test_installed_but_unconfigured_limits_nothing(pm: pluggy.PluginManager) -> None:
    pm.hook.affinity_configure(config=FakeConfig())
    request = RequestInfo(role="server", method="GET", path="/", client_ip="192.0.2.9")
    assert all(pm.hook.affinity_reject_request(request=request) is None for _ in range(100))


def test_config_error_from_configure_names_the_file(pm: pluggy.PluginManager) -> None:
    config = FakeConfig({"ratelimit": {"rate": 5, "key": "header"}}, source="/x.toml")
    with pytest.raises(ConfigError, match=r"^/x\.toml: plugins\.ratelimit\.key: "):
        pm.hook.affinity_configure(config=config)


def test_module_exports() -> None:
    assert len(set(affinity_ratelimit.__all__)) == len(affinity_ratelimit.__all__)
    for name in affinity_ratelimit.__all__:
        assert hasattr(affinity_ratelimit, name)
