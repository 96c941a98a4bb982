"""Tables to typed dataclasses: the one converter of the core's sections and every plugin's options.

A table (from TOML, or a JSON document) becomes an instance of a dataclass
whose fields say each key's type and default. Unknown keys, wrong types,
numbers out of bounds and strings that do not match are a
:class:`~affinity.errors.ConfigError` naming the key (``section.key[i].sub``)
and the file, or the environment variable ``AFFINITY_<SECTION>_<KEY>`` that
set it. Types: ``bool``, ``int``, ``float`` (finite; non-negative unless a
bound says otherwise), ``str``, ``Path`` (relative to the file's directory),
``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]``,
nested dataclasses, and classes with a ``from_text(str)`` classmethod that
raises ValueError. A field's :class:`Rule` (in its metadata under
:data:`RULE`) adds bounds, a pattern, a check and help;
:mod:`affinity.plugin.options` is how a plugin declares one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from affinity.errors import ConfigError

ENV_PREFIX = "AFFINITY_"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rule:
    """What a declared option allows beyond its type, and what it means (field metadata).

    Bounds and pattern apply to each item of a list or table; ``check`` is
    called with each converted value and raises ValueError to refuse it.
    """

    help: str = ""
    low: float | None = None
    high: float | None = None
    pattern: re.Pattern[str] | None = None
    expected: str = ""
    check: Callable[[Any], object] | None = None
    resolved: bool = False
    """True for a field the owner fills in after conversion (a secret, say): not an option."""

    def bounds(self) -> str:
        """The bounds in words (``from 1 to 32``, ``of at least 1``), empty when there are none."""
        low, high = _number_text(self.low), _number_text(self.high)
        if low and high:
            return f"from {low} to {high}"
        return f"of at least {low}" if low else f"of at most {high}" if high else ""


def _number_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else str(value)


RULE = "affinity"
"""The key of a :class:`Rule` in a dataclass field's metadata."""
_NO_RULE = Rule()


def convert(
    cls: type[T],
    table: Mapping[str, Any],
    *,
    prefix: str,
    source: str | None,
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """A dataclass instance from a table; a ConfigError names the key and the file or variable.

    Keys are named ``<prefix>.<key>``; each top-level key is overridden by the
    environment variable ``AFFINITY_<PREFIX>_<KEY>`` when ``env`` holds it.
    """
    ctx = _Ctx(source=source, base=Path.cwd() if base is None else base)
    value: T = _section(cls, table, prefix, ctx, env or {})
    return value


def option_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of a dataclass that a table may set (not the resolved ones)."""
    return [
        f for f in dataclasses.fields(cls) if f.init and not f.metadata.get(RULE, _NO_RULE).resolved
    ]


def env_name(key: str) -> str:
    """The variable that overrides a dotted key: ``plugins.ratelimit.rate`` ->
    ``AFFINITY_PLUGINS_RATELIMIT_RATE``."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


@dataclass(frozen=True, slots=True)
class _Ctx:
    source: str | None
    base: Path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key or None, source=self.source)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _section(cls: type[Any], table: Any, prefix: str, ctx: _Ctx, env: Mapping[str, str]) -> Any:
    if not isinstance(table, Mapping):
        raise ctx.error(prefix, f"expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in option_fields(cls)}
    for key in table:
        if key not in fields:
            expected = f"expected one of {sorted(fields)}" if fields else "this takes no options"
            raise ctx.error(_join(prefix, str(key)), f"unknown key; {expected}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        rule = f.metadata.get(RULE, _NO_RULE)
        variable = env_name(key) if env and prefix else ""
        if variable in env:
            from_env = dataclasses.replace(ctx, source=f"environment variable {variable}")
            values[name] = _convert(hints[name], _parse_env(env[variable]), key, from_env, rule)
        elif name in table:
            values[name] = _convert(hints[name], table[name], key, ctx, rule)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ctx.error(
                key, f"missing; expected {rule.expected}" if rule.expected else "missing"
            )
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ctx.error(prefix, str(exc)) from exc


def _parse_env(text: str) -> Any:
    """Environment values are TOML values when they parse as one, else plain strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _convert(hint: Any, value: Any, key: str, ctx: _Ctx, rule: Rule) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in typing.get_args(hint) if a is not type(None))
        return None if value in ("", None) else _convert(inner, value, key, ctx, rule)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) or value not in choices:
            expected = ", ".join(repr(c) for c in choices)
            raise ctx.error(key, f"expected one of {expected}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ctx.error(key, f"expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, f"{key}[{i}]", ctx, rule) for i, v in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, dict):
            raise ctx.error(key, f"expected a table, got {value!r}")
        item = typing.get_args(hint)[1]
        if item is Any:
            return dict(value)
        return {str(k): _convert(item, v, f"{key}.{k}", ctx, rule) for k, v in value.items()}
    if isinstance(hint, type) and hasattr(hint, "from_text"):
        if not isinstance(value, str):
            raise ctx.error(key, f"expected {rule.expected or 'a string'}, got {value!r}")
        try:
            return hint.from_text(value)
        except ValueError as exc:
            raise ctx.error(key, f"{exc}, got {value!r}") from None
    if dataclasses.is_dataclass(hint):
        return _section(typing.cast(type[Any], hint), value, key, ctx, {})
    value = _scalar(hint, value, key, ctx, rule)
    if rule.check is not None:
        try:
            rule.check(value)
        except ValueError as exc:
            raise ctx.error(key, str(exc)) from None
    return value


def _scalar(hint: Any, value: Any, key: str, ctx: _Ctx, rule: Rule) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ctx.error(key, f"expected true or false, got {value!r}")
        return value
    if hint is int or hint is float:
        return _number(hint, value, key, ctx, rule)
    if hint is str:
        if not isinstance(value, str):
            raise ctx.error(key, f"expected {rule.expected or 'a string'}, got {value!r}")
        if rule.pattern is not None and not rule.pattern.fullmatch(value):
            expected = rule.expected or f"text matching {rule.pattern.pattern!r}"
            raise ctx.error(key, f"expected {expected}, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ctx.error(key, f"expected a file path, got {value!r}")
        return ctx.base / Path(value).expanduser()
    raise AssertionError(f"unsupported option type {hint!r}")  # pragma: no cover


def _number(hint: type[int] | type[float], value: Any, key: str, ctx: _Ctx, rule: Rule) -> Any:
    low = 0 if rule.low is None else rule.low
    high = math.inf if rule.high is None else rule.high
    kinds = (int,) if hint is int else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
    if not ok or not low <= value <= high:
        what = "integer" if hint is int else "number"
        bounds = rule.bounds()
        expected = f"a{'n' * (hint is int)} {what} {bounds}" if bounds else f"a non-negative {what}"
        raise ctx.error(key, f"expected {expected}, got {value!r}")
    return hint(value)
