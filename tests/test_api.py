"""The public names of ``affinity``: importable, the documented objects, and typed for users.

``affinity/__init__.py`` imports its public names lazily, so nothing but a
test notices when one of them stops resolving, or when the type checkers'
view (the ``TYPE_CHECKING`` block) drifts from the runtime one and
``from affinity import Client`` fails under ``mypy --strict`` in users' code.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import affinity
from affinity import _EXPORTS


def test_all_lists_every_export_sorted() -> None:
    assert affinity.__all__ == sorted(["__version__", "hookimpl", *_EXPORTS])


@pytest.mark.parametrize("name", sorted(_EXPORTS))
def test_each_export_is_the_object_of_its_module(name: str) -> None:
    assert getattr(affinity, name) is getattr(importlib.import_module(_EXPORTS[name]), name)


def test_the_clients_are_public() -> None:
    from affinity import AsyncClient, Client
    from affinity.client import AsyncClient as Async
    from affinity.client import Client as Sync

    assert (Client, AsyncClient) == (Sync, Async)


def test_type_checkers_see_every_export_as_a_re_export() -> None:
    """Under ``no_implicit_reexport`` only ``import X as X`` (or ``__all__``) re-exports."""
    tree = ast.parse(Path(affinity.__file__).read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    exported = {
        (node.module, alias.name)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name
    }
    assert exported == set((module, name) for name, module in _EXPORTS.items())


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        affinity.Nope  # noqa: B018
