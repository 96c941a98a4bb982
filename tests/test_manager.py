from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from affinity import hookimpl
from affinity.config import Config, load
from affinity.errors import ConfigError, PluginError
from affinity.models import AssignRequest, Pool, Rejection, RequestInfo, Server
from affinity.plugin.manager import DEFAULT_PLUGINS, PluginManager
from affinity.plugin.options import option
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


# -- pluggy's own checks: unknown hooks, historic configure, blocking ----------------------


@dataclass(frozen=True, kw_only=True)
class GreetOptions:
    times: int = option(1, low=1, high=10, help="how often")


class Greeter:
    def __init__(self) -> None:
        self.configured: list[GreetOptions] = []

    @hookimpl
    def affinity_declare_options(self) -> tuple[str, type[Any]]:
        return "greet", GreetOptions

    @hookimpl
    def affinity_configure(self, config: Config) -> None:
        self.configured.append(config.plugin_options("greet", GreetOptions))


def test_a_misspelled_hook_fails_at_load_naming_it() -> None:
    class Typo:
        @hookimpl
        def affinity_reject_requests(self, request: object) -> None:
            return None

    with pytest.raises(PluginError) as info:
        PluginManager(autoload=False, env={}, plugins=[Typo()])
    message = str(info.value)
    assert "unknown hook 'affinity_reject_requests'" in message
    assert "did you mean 'affinity_reject_request'?" in message


def test_a_misspelled_hook_registered_later_is_refused_too() -> None:
    class Typo:
        @hookimpl
        def affinity_configured(self, config: object) -> None:
            return None

    pm = PluginManager(autoload=False, env={})
    with pytest.raises(PluginError, match="'affinity_configured'.*'affinity_configure'"):
        pm.register(Typo(), "typo")
    assert "typo" not in pm.names()


def test_declared_options_are_converted_and_handed_over(tmp_path: Path) -> None:
    greeter = Greeter()
    pm = PluginManager(autoload=False, env={}, plugins=[greeter])
    pm.configure(config_with(tmp_path, "[plugins.greet]\ntimes = 3\n"))
    assert greeter.configured == [GreetOptions(times=3)]


def test_a_misspelled_plugin_table_names_the_known_tables(tmp_path: Path) -> None:
    pm = PluginManager(autoload=False, env={}, plugins=[Greeter()])
    with pytest.raises(ConfigError) as info:
        pm.configure(config_with(tmp_path, "[plugins.gret]\ntimes = 3\n"))
    assert info.value.key == "plugins.gret"
    assert info.value.source == str(tmp_path / "affinity.toml")
    assert "did you mean 'greet'?" in info.value.message
    assert "known plugin tables: 'greet'" in info.value.message
    assert "AFFINITY_DISABLE_PLUGIN_AUTOLOAD is set" in info.value.message


def test_a_bad_plugin_option_names_the_key_and_the_file_before_any_plugin_runs(
    tmp_path: Path,
) -> None:
    greeter = Greeter()
    pm = PluginManager(autoload=False, env={}, plugins=[greeter])
    with pytest.raises(ConfigError) as info:
        pm.configure(config_with(tmp_path, "[plugins.greet]\ntimes = 0\n"))
    assert info.value.key == "plugins.greet.times"
    assert str(tmp_path / "affinity.toml") in str(info.value)
    assert greeter.configured == []


def test_a_variable_for_no_declared_option_is_an_error_naming_it(tmp_path: Path) -> None:
    pm = PluginManager(autoload=False, env={}, plugins=[Greeter()])
    config = load(None, env={"AFFINITY_PLUGINS_GREET_TIMS": "2"})
    with pytest.raises(ConfigError) as info:
        pm.configure(config)
    assert info.value.source == "environment variable AFFINITY_PLUGINS_GREET_TIMS"
    good = load(None, env={"AFFINITY_PLUGINS_GREET_TIMES": "2"})
    greeter = Greeter()
    PluginManager(autoload=False, env={}, plugins=[greeter]).configure(good)
    assert greeter.configured == [GreetOptions(times=2)]


def test_a_plugin_registered_after_configure_is_configured(tmp_path: Path) -> None:
    pm = PluginManager(autoload=False, env={})
    pm.configure(config_with(tmp_path, ""))
    late = Greeter()
    pm.register(late, "late")
    assert late.configured == [GreetOptions()]


def test_a_late_plugin_that_refuses_the_configuration_is_not_left_registered() -> None:
    class Strict:
        @hookimpl
        def affinity_configure(self, config: Config) -> None:
            raise ConfigError("no", key="plugins.strict.x", source=config.source)

    pm = PluginManager(autoload=False, env={})
    pm.configure(load(None, env={}))
    with pytest.raises(ConfigError, match="plugins.strict.x"):
        pm.register(Strict(), "strict")
    assert "strict" not in pm.names()


def test_two_plugins_declaring_one_table_is_an_error() -> None:
    pm = PluginManager(autoload=False, env={}, plugins=[Greeter(), Greeter()])
    with pytest.raises(PluginError, match=r"both declare \[plugins.greet\]"):
        pm.declared_options()


def test_blocked_plugins_are_not_loaded_and_their_tables_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = metadata.EntryPoint(name="broken", value="affinity_no_such_module", group="affinity")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [broken])
    env = {
        "AFFINITY_DISABLE_PLUGINS": "broken, affinity.builtin.consul.plugin",
        "AFFINITY_PLUGINS": "affinity_no_such_module_either",
    }
    with pytest.raises(PluginError, match="affinity_no_such_module_either"):
        PluginManager(env=env)  # blocking one name does not hide the others
    del env["AFFINITY_PLUGINS"]
    pm = PluginManager(env=env)  # the broken entry point is never imported
    assert "broken" not in pm.names()
    assert "affinity.builtin.consul.plugin" not in pm.names()
    assert "affinity.builtin.policies" in pm.names()
    pm.configure(config_with(tmp_path, "[plugins.broken]\nanything = 1\n"))


def test_describe_names_distribution_version_and_hooks() -> None:
    pm = PluginManager(env={}, plugins=[Greeter()])
    found = {info.name: info for info in pm.describe()}
    policies = found["affinity.builtin.policies"]
    assert (policies.distribution, policies.hooks) == ("affinity-lb", ("affinity_make_policy",))
    ratelimit = found["ratelimit"]
    assert (ratelimit.distribution, ratelimit.version) == (
        "affinity-ratelimit",
        metadata.version("affinity-ratelimit"),
    )
    assert "affinity_reject_request" in ratelimit.hooks
    assert ratelimit.options == "plugins.ratelimit"
    greeter = next(info for info in found.values() if info.options == "plugins.greet")
    assert (greeter.distribution, greeter.version) == ("", "")  # not installed: a test object


# -- the request filters' call, held against pluggy's ------------------------------------


def _filter(
    name: str,
    calls: list[str],
    answer: Rejection | None,
    tryfirst: bool = False,
    trylast: bool = False,
) -> object:
    class Filter:
        @hookimpl(tryfirst=tryfirst, trylast=trylast)
        def affinity_reject_request(self, request: RequestInfo) -> Rejection | None:
            calls.append(name)
            return answer

    return Filter()


def _blind(name: str, calls: list[str], answer: Rejection | None) -> object:
    class Blind:  # names none of the hook's arguments
        @hookimpl
        def affinity_reject_request(self) -> Rejection | None:
            calls.append(name)
            return answer

    return Blind()


def _wrapper(calls: list[str]) -> object:
    class Wrapper:
        @hookimpl(wrapper=True)
        def affinity_reject_request(self, request: RequestInfo) -> Any:
            calls.append("wrapper")
            return (yield)

    return Wrapper()


NO = Rejection(status=403, error="forbidden", detail="no")
LATER = Rejection(status=429, error="rate_limited", detail="later")
FILTER_SETS: list[Any] = [
    [],
    [("a", None, {})],
    [("a", NO, {})],
    [("a", None, {}), ("b", None, {})],
    [("a", NO, {}), ("b", LATER, {})],
    [("a", NO, {"trylast": True}), ("b", None, {}), ("c", LATER, {"tryfirst": True})],
    [("a", None, {"tryfirst": True}), ("blind", NO, {}), ("c", LATER, {})],
    [("a", LATER, {}), ("wrapper", None, {}), ("b", None, {})],
]


@pytest.mark.parametrize("tracing", [False, True])
@pytest.mark.parametrize("specs", FILTER_SETS)
def test_the_request_filters_answer_and_run_as_pluggy_calls_them(
    specs: list[tuple[str, Rejection | None, dict[str, bool]]], tracing: bool
) -> None:
    ours: list[str] = []
    plugins = []
    for name, answer, marks in specs:
        if name == "wrapper":
            plugins.append(_wrapper(ours))
        elif name == "blind":
            plugins.append(_blind(name, ours, answer))
        else:
            plugins.append(_filter(name, ours, answer, **marks))
    env = {"AFFINITY_TRACE_PLUGINS": "1"} if tracing else {}
    pm = PluginManager(autoload=False, env=env, plugins=plugins)
    request = RequestInfo(role="server", method="GET", path="/", client_ip="192.0.2.1")
    expected = pm._pm.hook.affinity_reject_request(request=request)  # pluggy's call
    theirs = list(ours)
    ours.clear()
    assert pm.reject_request(request) is expected
    assert ours == theirs  # the same implementations, in the same order
    ours.clear()
    assert pm.reject_request(request) is expected  # bound now: the same again
    assert ours == theirs


def test_the_request_filters_are_bound_again_after_a_registration() -> None:
    calls: list[str] = []
    pm = PluginManager(autoload=False, env={}, plugins=[_filter("a", calls, None)])
    request = RequestInfo(role="server", method="GET", path="/", client_ip="192.0.2.1")
    assert pm.reject_request(request) is None
    pm.register(_filter("b", calls, NO))
    assert pm.reject_request(request) is NO
    assert calls == ["a", "b"]
