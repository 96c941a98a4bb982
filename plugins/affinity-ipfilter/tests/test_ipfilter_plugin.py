"""The filter as a plugin: entry point, hook signatures against the contract, hook calls."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import affinity_ipfilter
import pluggy
import pytest
from affinity_ipfilter import IPFilter

from affinity.errors import ConfigError
from affinity.models import RequestInfo, SharedSettings
from affinity.plugin import hookimpl
from affinity.plugin import spec as hookspecs
from affinity.testing import config_from_text, plugin_manager


def test_entry_point_names_the_process_wide_filter() -> None:
    eps = importlib.metadata.entry_points(group="affinity", name="ipfilter")
    assert [ep.value for ep in eps] == ["affinity_ipfilter:STATE"]
    assert next(iter(eps)).load() is affinity_ipfilter.STATE


def test_hook_signatures_match_the_contract() -> None:
    pm = pluggy.PluginManager("affinity")
    pm.add_hookspecs(hookspecs)
    pm.register(IPFilter(), name="ipfilter")  # validates every hookimpl against its spec
    pm.check_pending()


def test_hooks_through_the_manager(tmp_path: Path) -> None:
    f = IPFilter()
    pm = plugin_manager(f)
    assert pm.declared_options() == {"ipfilter": affinity_ipfilter.IPFilterOptions}
    pm.configure(config_from_text(tmp_path, '[plugins.ipfilter]\ndeny = ["192.0.2.0/24"]\n'))
    request = RequestInfo(role="referral", method="GET", path="/v1/assign", client_ip="192.0.2.9")
    answer = pm.reject_request(request)
    assert answer is not None and (answer.status, answer.rule) == (403, "ipfilter.deny[0]")

    other = SharedSettings(name="ratelimit", version=9, value={"deny": "not even a list"})
    assert pm.apply_settings(other) is None  # not ours: ignored
    assert f.version == 0

    bad = SharedSettings(name="ipfilter", version=1, value={"deny": ["nope"]})
    refusal = pm.apply_settings(bad)
    assert refusal is not None and refusal.key == "ipfilter.deny[0]"

    good = SharedSettings(name="ipfilter", version=2, value={"deny": ["198.51.100.0/24"]})
    assert pm.apply_settings(good) is None
    assert f.version == 2
    request = RequestInfo(role="server", method="GET", path="/", client_ip="198.51.100.1")
    answer = pm.reject_request(request)
    assert answer is not None and answer.rule == "ipfilter.settings.deny[0]"
    assert f.counters() == {"ipfilter.deny[0]": 1, "ipfilter.settings.deny[0]": 1}
    assert pm.report_counters() == f.counters()


def test_a_bad_option_names_the_key_and_the_file(tmp_path: Path) -> None:
    text = '[plugins.ipfilter]\nallow = ["10.0.0.0/8", "10.0.0.0/80"]\n'
    with pytest.raises(ConfigError) as info:
        plugin_manager(IPFilter()).configure(config_from_text(tmp_path, text))
    assert info.value.key == "plugins.ipfilter.allow[1]"
    assert str(info.value).startswith(f"{tmp_path / 'affinity.toml'}: plugins.ipfilter.allow[1]: ")


def test_an_option_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    f = IPFilter()
    env = {"AFFINITY_PLUGINS_IPFILTER_DENY": '["203.0.113.0/24"]'}
    plugin_manager(f).configure(config_from_text(tmp_path, "", env))
    answer = f.reject(RequestInfo(role="server", method="GET", path="/", client_ip="203.0.113.5"))
    assert answer is not None
    env = {"AFFINITY_PLUGINS_IPFILTER_DENY": '["203.0.113.0/240"]'}
    with pytest.raises(ConfigError, match="environment variable AFFINITY_PLUGINS_IPFILTER_DENY"):
        plugin_manager(IPFilter()).configure(config_from_text(tmp_path, "", env))


def test_reject_runs_before_other_filters(tmp_path: Path) -> None:
    class Other:
        @hookimpl
        def affinity_reject_request(self, request: RequestInfo) -> None:
            raise AssertionError("the ipfilter should have answered first")

    pm = plugin_manager(IPFilter(), Other())
    pm.configure(config_from_text(tmp_path, '[plugins.ipfilter]\ndeny = ["0.0.0.0/0"]\n'))
    request = RequestInfo(role="server", method="GET", path="/", client_ip="1.2.3.4")
    answer = pm.reject_request(request)
    assert answer is not None and answer.status == 403


def test_module_exports() -> None:
    assert len(set(affinity_ipfilter.__all__)) == len(affinity_ipfilter.__all__)
    for name in affinity_ipfilter.__all__:
        assert hasattr(affinity_ipfilter, name)
