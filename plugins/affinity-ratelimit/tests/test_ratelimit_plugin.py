"""The limiter as a plugin: entry point, hook signatures against the contract, hook calls."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import affinity_ratelimit
import pluggy
import pytest
from affinity_ratelimit import RateLimiter

from affinity.errors import ConfigError
from affinity.models import RequestInfo, SharedSettings
from affinity.plugin import spec as hookspecs
from affinity.testing import config_from_text, plugin_manager


def test_entry_point_names_the_process_wide_limiter() -> None:
    eps = importlib.metadata.entry_points(group="affinity", name="ratelimit")
    assert [ep.value for ep in eps] == ["affinity_ratelimit:STATE"]
    assert next(iter(eps)).load() is affinity_ratelimit.STATE


def test_hook_signatures_match_the_contract() -> None:
    pm = pluggy.PluginManager("affinity")
    pm.add_hookspecs(hookspecs)
    pm.register(RateLimiter(), name="ratelimit")  # validates every hookimpl against its spec
    pm.check_pending()


def test_hooks_through_the_manager(tmp_path: Path) -> None:
    limiter = RateLimiter(clock=lambda: 100.0)
    pm = plugin_manager(limiter)
    table = "[plugins.ratelimit]\nrate = 0.001\nburst = 2\nallow_loosening = true\n"
    pm.configure(config_from_text(tmp_path, table))
    request = RequestInfo(role="referral", method="GET", path="/v1/assign", client_ip="192.0.2.9")
    assert pm.reject_request(request) is None
    assert pm.reject_request(request) is None
    answer = pm.reject_request(request)
    assert answer is not None and (answer.status, answer.rule) == (429, "ratelimit.default")
    assert answer.retry_after is not None and answer.retry_after >= 1

    other = SharedSettings(name="ipfilter", version=9, value={"rate": "not a number"})
    assert pm.apply_settings(other) is None  # not ours: ignored
    assert limiter.version == 0

    refusal = pm.apply_settings(SharedSettings(name="ratelimit", version=1, value={"rate": -1}))
    assert refusal is not None and refusal.key == "ratelimit.rate"

    good = SharedSettings(name="ratelimit", version=2, value={"rate": None, "burst": None})
    assert pm.apply_settings(good) is None
    assert limiter.version == 2
    assert pm.reject_request(request) is None
    assert limiter.counters() == {"ratelimit.default": 1}
    assert pm.report_counters() == {"ratelimit.default": 1}


def test_installed_but_unconfigured_limits_nothing(tmp_path: Path) -> None:
    pm = plugin_manager(RateLimiter())
    pm.configure(config_from_text(tmp_path, ""))
    request = RequestInfo(role="server", method="GET", path="/", client_ip="192.0.2.9")
    assert all(pm.reject_request(request) is None for _ in range(100))


def test_a_bad_option_names_the_key_and_the_file(tmp_path: Path) -> None:
    text = '[plugins.ratelimit]\nrate = 5\nkey = "header"\n'
    with pytest.raises(ConfigError) as info:
        plugin_manager(RateLimiter()).configure(config_from_text(tmp_path, text))
    assert str(info.value).startswith(f"{tmp_path / 'affinity.toml'}: plugins.ratelimit.key: ")


def test_an_option_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    limiter = RateLimiter()
    plugin_manager(limiter).configure(
        config_from_text(tmp_path, "", {"AFFINITY_PLUGINS_RATELIMIT_RATE": "7"})
    )
    assert limiter.policy.limits["/"][0].rate == 7.0
    env = {"AFFINITY_PLUGINS_RATELIMIT_RATE": "0"}
    with pytest.raises(ConfigError) as info:
        plugin_manager(RateLimiter()).configure(config_from_text(tmp_path, "", env))
    assert info.value.key == "plugins.ratelimit.rate"
    assert info.value.source == "environment variable AFFINITY_PLUGINS_RATELIMIT_RATE"


def test_a_misspelled_table_is_an_error_naming_the_known_plugins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        plugin_manager(RateLimiter()).configure(
            config_from_text(tmp_path, "[plugins.ratelimt]\nrate = 5\n")
        )
    assert info.value.key == "plugins.ratelimt"
    assert "did you mean 'ratelimit'?" in info.value.message
    assert "known plugin tables: 'ratelimit'" in info.value.message


def test_module_exports() -> None:
    assert len(set(affinity_ratelimit.__all__)) == len(affinity_ratelimit.__all__)
    for name in affinity_ratelimit.__all__:
        assert hasattr(affinity_ratelimit, name)
