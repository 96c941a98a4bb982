"""The module as a plugin: entry point, hook signatures against the contract, hook calls."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import affinity_ipfilter
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
    manager.register(affinity_ipfilter, name="ipfilter")  # validates against the hookspecs
    yield manager
    affinity_ipfilter.STATE.configure(FakeConfig())  # leave the process-wide state empty


def test_entry_point_names_the_module() -> None:
    eps = importlib.metadata.entry_points(group="affinity", name="ipfilter")
    assert [ep.value for ep in eps] == ["affinity_ipfilter"]
    assert next(iter(eps)).load() is affinity_ipfilter


def test_hooks_through_pluggy(pm: pluggy.PluginManager) -> None:
    pm.hook.affinity_configure(config=FakeConfig({"ipfilter": {"deny": ["192.0.2.0/24"]}}))
    request = RequestInfo(role="referral", method="GET", path="/v1/assign", client_ip="192.0.2.9")
    answer = pm.hook.affinity_reject_request(request=request)
    assert answer.status == 403
    assert answer.rule == "ipfilter.deny[0]"

    other = SharedSettings(name="ratelimit", version=9, value={"deny": "not even a list"})
    pm.hook.affinity_check_settings(settings=other)  # not ours: ignored
    pm.hook.affinity_settings_changed(settings=other)
    assert affinity_ipfilter.STATE.version == 0

    bad = SharedSettings(name="ipfilter", version=1, value={"deny": ["nope"]})
    with pytest.raises(ConfigError):
        pm.hook.affinity_check_settings(settings=bad)

    good = SharedSettings(name="ipfilter", version=2, value={"deny": ["198.51.100.0/24"]})
    pm.hook.affinity_check_settings(settings=good)
    pm.hook.affinity_settings_changed(settings=good)
    assert affinity_ipfilter.STATE.version == 2
    request = RequestInfo(role="server", method="GET", path="/", client_ip="198.51.100.1")
    assert pm.hook.affinity_reject_request(request=request).rule == "ipfilter.settings.deny[0]"
    assert affinity_ipfilter.STATE.counters() == {
        "ipfilter.deny[0]": 1,
        "ipfilter.settings.deny[0]": 1,
    }
    assert pm.hook.affinity_report_counters() == [affinity_ipfilter.STATE.counters()]


def test_config_error_from_configure_names_the_file(pm: pluggy.PluginManager) -> None:
    config = FakeConfig({"ipfilter": {"allow": ["10.0.0.0/8", "10.0.0.0/80"]}}, source="/x.toml")
    with pytest.raises(ConfigError, match=r"^/x\.toml: plugins\.ipfilter\.allow\[1\]: "):
        pm.hook.affinity_configure(config=config)


def test_reject_runs_before_other_filters(pm: pluggy.PluginManager) -> None:
    class Other:
        @pluggy.HookimplMarker("affinity")
        def affinity_reject_request(self, request: RequestInfo) -> None:
            raise AssertionError("the ipfilter should have answered first")

    pm.register(Other())
    pm.hook.affinity_configure(config=FakeConfig({"ipfilter": {"deny": ["0.0.0.0/0"]}}))
    request = RequestInfo(role="server", method="GET", path="/", client_ip="1.2.3.4")
    assert pm.hook.affinity_reject_request(request=request).status == 403


def test_module_exports() -> None:
    assert len(set(affinity_ipfilter.__all__)) == len(affinity_ipfilter.__all__)
    for name in affinity_ipfilter.__all__:
        assert hasattr(affinity_ipfilter, name)
