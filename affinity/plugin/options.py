"""A plugin's options, declared once: a dataclass whose fields give name, type, default and help.

The core converts the plugin's table with the same converter as its own
sections (:func:`affinity.config.convert`): unknown keys, wrong types and
values out of bounds are a :class:`~affinity.errors.ConfigError` naming the
key and the file, or the environment variable that set it::

    @dataclass(frozen=True, kw_only=True)
    class GreetOptions:
        greeting: str = option("hello", help="what to say")
        times: int = option(1, low=1, high=10, help="how often")


    @hookimpl
    def affinity_declare_options() -> tuple[str, type[Any]]:
        return "greet", GreetOptions  # the [plugins.greet] table


    @hookimpl
    def affinity_configure(config: Config) -> None:
        options = config.plugin_options("greet", GreetOptions)

Types: ``bool``, ``int``, ``float``, ``str``, ``Path`` (relative to the
file's directory), ``Literal[...]``, ``X | None``, ``tuple[X, ...]`` (a
list), ``Mapping[str, X]`` (a table) and nested dataclasses (a table, or a
list of tables). Numbers are non-negative unless ``low`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from affinity.convert import RULE, Rule, convert, option_fields
from affinity.errors import ConfigError

__all__ = [
    "NoOptions",
    "Origin",
    "describe",
    "markdown_table",
    "option",
    "option_fields",
    "overlay",
    "read_options",
    "replace_block",
    "resolved",
]

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    low: float | None = None,
    high: float | None = None,
    pattern: str | None = None,
    expected: str = "",
    check: Callable[[Any], object] | None = None,
) -> Any:
    """A dataclass field declaring one option; no ``default`` makes it required.

    :param help: One sentence for the docs and ``affinity plugins``.
    :param low: Least value of a number (default 0).
    :param high: Greatest value of a number.
    :param pattern: A regular expression a string must match whole.
    :param expected: What a valid value looks like, for the error ("a tag of letters...").
    :param check: Called with the converted value (each item of a list); raises
        ValueError with the reason to refuse it.
    """
    rule = Rule(
        help=help,
        low=low,
        high=high,
        pattern=None if pattern is None else re.compile(pattern),
        expected=expected,
        check=check,
    )
    metadata = {RULE: rule}
    if isinstance(default, list | dict | set):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def resolved(default: Any, *, secret: bool = False) -> Any:
    """A dataclass field the owner fills in after conversion (from the environment, a file).

    Not an option: a table may not set it and the docs do not list it. A
    ``secret`` one is left out of ``repr``, so no log line or error shows it.
    """
    metadata = {RULE: Rule(resolved=True)}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True, slots=True)
class NoOptions:
    """The options of something that takes none: any key is an error."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a set of options comes from: the key errors start with, and the file or document."""

    key: str
    """``plugins.<name>`` for the config file, ``<name>`` for a shared settings document."""
    source: str | None
    shared: bool = False
    """True for a shared settings document, False for the config file."""

    def error(self, message: str, key: str = "") -> ConfigError:
        """A ConfigError for ``key`` (relative to :attr:`key`)."""
        full = f"{self.key}.{key}" if self.key and key else self.key or key
        return ConfigError(message, key=full or None, source=self.source)


def read_options(cls: type[T], table: Mapping[str, Any], origin: Origin) -> T:
    """Convert a table (a shared document's value, say) to the options dataclass ``cls``."""
    return convert(cls, table, prefix=origin.key, source=origin.source)


def overlay(options: T, document: Any, origin: Origin) -> T:
    """``options`` with a document laid over it key by key.

    A key the document sets replaces the option (a list as a whole), a key set
    to null restores the option's default, and a key it leaves out keeps the
    option as it is.
    """
    if not isinstance(document, Mapping):
        raise origin.error(f"expected a table, got {document!r}")
    cls = type(options)
    given = read_options(cls, {k: v for k, v in document.items() if v is not None}, origin)
    fields = {f.name: f for f in option_fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in document.items():
        if value is not None:
            changes[key] = getattr(given, key)
        elif key in fields:
            changes[key] = _default(fields[key])
        else:
            raise origin.error(f"unknown key; expected one of {sorted(fields)}", str(key))
    return dataclasses.replace(options, **changes)  # type: ignore[type-var]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


# -- documentation ------------------------------------------------------------------


def describe(hint: Any) -> str:
    """A type in the words of the docs: ``number``, ``list of strings``, ``"ip" or "client"``..."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return describe(next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return " or ".join(f'`"{a}"`' for a in args)
    if origin is tuple:
        inner = describe(args[0])
        return f"list of {_plural(inner)}"
    if origin is Mapping:
        return "table"
    if dataclasses.is_dataclass(hint):
        return "table"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "file path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(text: str) -> str:
    if "`" in text:
        return f"({text})"
    return "tables" if text == "table" else text + "s"


def default_text(f: dataclasses.Field[Any]) -> str:
    """A field's default as the docs show it: a TOML value, ``unset`` or ``required``."""
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = _default(f)
    if value is None:
        return "unset"
    return f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Path):
        return f'"{value}"'
    return repr(value)


def markdown_table(cls: type[Any], prefix: str = "") -> str:
    """The options of ``cls`` as a Markdown table (key, type, default, meaning).

    Nested dataclasses (a table, or a list of tables) follow as rows named
    ``<key>.<field>`` (``<key>[].<field>`` for a list of tables).
    """
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += _rows(cls, prefix)
    return "\n".join(lines) + "\n"


def _rows(cls: type[Any], prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in option_fields(cls):
        rule: Rule = f.metadata.get(RULE, Rule())
        hint = hints[f.name]
        kind = f"{describe(hint)} {rule.bounds()}".rstrip()
        rows.append(f"| `{prefix}{f.name}` | {kind} | {default_text(f)} | {rule.help} |")
        nested = _nested(hint)
        if nested is not None:
            suffix = "[]." if typing.get_origin(_optional(hint)) is tuple else "."
            rows += _rows(nested, f"{prefix}{f.name}{suffix}")
    return rows


BLOCK_START = "<!-- options: {name} -->"
BLOCK_END = "<!-- end options -->"


def replace_block(text: str, name: str, table: str) -> str:
    """``text`` with the lines between ``<!-- options: NAME -->`` and ``<!-- end options -->``
    set to ``table``: how a document keeps a generated options table (ValueError if absent)."""
    start = BLOCK_START.format(name=name)
    before, found, rest = text.partition(start + "\n")
    if not found or BLOCK_END not in rest:
        raise ValueError(f"no block {start!r} ... {BLOCK_END!r}")
    return before + start + "\n" + table + rest[rest.index(BLOCK_END) :]


def _optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _nested(hint: Any) -> type[Any] | None:
    hint = _optional(hint)
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint if dataclasses.is_dataclass(hint) and isinstance(hint, type) else None
