"""Declared plugin options: one converter; errors name the key and the file or variable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from affinity.config import load
from affinity.errors import ConfigError
from affinity.plugin.options import (
    Origin,
    markdown_table,
    option,
    overlay,
    read_options,
    replace_block,
)


@dataclass(frozen=True, kw_only=True)
class Rule:
    prefix: str = option(help="path prefix", pattern="/.*", expected="a path starting with '/'")
    weight: float = option(1.0, low=0.5, high=2, help="share")


@dataclass(frozen=True, kw_only=True)
class GreetOptions:
    greeting: str = option("hello", help="what to say")
    times: int = option(1, low=1, high=10, help="how often")
    mode: Literal["loud", "quiet"] = option("quiet", help="how")
    limit: float | None = option(None, help="optional number")
    words: tuple[str, ...] = option(("a", "b"), help="some words", pattern="[a-z]+")
    file: Path | None = option(None, help="a file")
    rules: tuple[Rule, ...] = option((), help="rules")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "affinity.toml"
    path.write_text(text)
    return path


def test_defaults_when_the_table_is_absent() -> None:
    options = load(None, env={}).plugin_options("greet", GreetOptions)
    assert options == GreetOptions()
    assert (options.greeting, options.times, options.words) == ("hello", 1, ("a", "b"))


def test_values_nested_tables_and_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[plugins.greet]\ntimes = 3\nmode = "loud"\nlimit = 2\nfile = "x/y"\n'
        '[[plugins.greet.rules]]\nprefix = "/a"\nweight = 2\n',
    )
    options = load(path, env={}).plugin_options("greet", GreetOptions)
    assert (options.times, options.mode, options.limit) == (3, "loud", 2.0)
    assert options.file == tmp_path / "x" / "y"
    assert options.rules == (Rule(prefix="/a", weight=2.0),)


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("greting = 'hi'", "plugins.greet.greting", "unknown key; expected one of"),
        ("times = 0", "plugins.greet.times", "expected an integer from 1 to 10, got 0"),
        ("times = true", "plugins.greet.times", "expected an integer from 1 to 10"),
        ("mode = 'shout'", "plugins.greet.mode", "expected one of 'loud', 'quiet', got 'shout'"),
        ("limit = nan", "plugins.greet.limit", "expected a non-negative number, got nan"),
        ("words = ['ok', 'Not']", "plugins.greet.words[1]", "text matching '[a-z]+'"),
        ("words = 'ok'", "plugins.greet.words", "expected a list"),
        ("rules = [{weight = 1}]", "plugins.greet.rules[0].prefix", "missing"),
        ("rules = [{prefix = 'a'}]", "plugins.greet.rules[0].prefix", "a path starting with '/'"),
        ("rules = [{prefix = '/', weight = 3}]", "plugins.greet.rules[0].weight", "0.5 to 2"),
        ("rules = [3]", "plugins.greet.rules[0]", "expected a table"),
    ],
)
def test_a_bad_option_names_the_key_and_the_file(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    path = write(tmp_path, f"[plugins.greet]\n{text}\n")
    config = load(path, env={})
    with pytest.raises(ConfigError) as info:
        config.plugin_options("greet", GreetOptions)
    assert info.value.key == key
    assert info.value.source == str(path)
    assert message in info.value.message


def test_environment_overrides_and_its_errors_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins.greet]\ntimes = 2\n")
    config = load(
        path, env={"AFFINITY_PLUGINS_GREET_TIMES": "5", "AFFINITY_PLUGINS_GREET_MODE": "loud"}
    )
    options = config.plugin_options("greet", GreetOptions)
    assert (options.times, options.mode) == (5, "loud")
    bad = load(path, env={"AFFINITY_PLUGINS_GREET_TIMES": "many"})
    with pytest.raises(ConfigError) as info:
        bad.plugin_options("greet", GreetOptions)
    assert info.value.key == "plugins.greet.times"
    assert "AFFINITY_PLUGINS_GREET_TIMES" in str(info.value)
    assert str(path) not in str(info.value)


def test_the_environment_snapshot_is_never_shown() -> None:
    config = load(None, env={"AFFINITY_PLUGINS_GREET_GREETING": "s3cret"})
    assert "s3cret" not in repr(config)


def test_overlay_replaces_restores_and_keeps() -> None:
    origin = Origin("greet", "shared settings 'greet' version 2", shared=True)
    base = GreetOptions(times=4, mode="loud", words=("x",))
    merged = overlay(base, {"times": 7, "mode": None}, origin)
    assert (merged.times, merged.mode, merged.words) == (7, "quiet", ("x",))
    with pytest.raises(ConfigError) as info:
        overlay(base, {"tims": 1}, origin)
    assert info.value.key == "greet.tims"
    assert info.value.source == "shared settings 'greet' version 2"


def test_read_options_of_a_document() -> None:
    origin = Origin("greet", "doc")
    assert read_options(GreetOptions, {"times": 2}, origin).times == 2
    with pytest.raises(ConfigError, match=r"doc: greet.times"):
        read_options(GreetOptions, {"times": 20}, origin)


def test_markdown_table_lists_every_option_with_type_default_and_help() -> None:
    table = markdown_table(GreetOptions)
    assert "| `times` | integer from 1 to 10 | `1` | how often |" in table
    assert '| `mode` | `"loud"` or `"quiet"` | `"quiet"` | how |' in table
    assert "| `limit` | number | unset | optional number |" in table
    assert '| `words` | list of strings | `["a", "b"]` | some words |' in table
    assert "| `rules[].prefix` | string | required | path prefix |" in table


def test_replace_block_keeps_the_text_around_a_generated_table() -> None:
    text = "intro\n<!-- options: plugins.greet -->\nold\n<!-- end options -->\nafter\n"
    new = replace_block(text, "plugins.greet", "| new |\n")
    assert new == "intro\n<!-- options: plugins.greet -->\n| new |\n<!-- end options -->\nafter\n"
    with pytest.raises(ValueError, match="plugins.other"):
        replace_block(text, "plugins.other", "x")


def test_overlay_refuses_an_unknown_key_even_when_null() -> None:
    origin = Origin("greet", "doc", shared=True)
    with pytest.raises(ConfigError) as info:
        overlay(GreetOptions(), {"tims": None}, origin)
    assert info.value.key == "greet.tims"
