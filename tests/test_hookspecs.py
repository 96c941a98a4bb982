"""The plugin contract: every hook is typed, documented in docs/hooks.md, and has a facade."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from affinity.plugin import spec as hookspecs
from affinity.plugin.manager import PluginManager

DOCS = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"
SPECS = [
    (name, fn)
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("affinity_")
]


def test_there_are_hooks_for_each_role() -> None:
    names = {name for name, _ in SPECS}
    for needed in (
        "affinity_make_policy",
        "affinity_make_registry",
        "affinity_make_registrar",
        "affinity_make_health_source",
        "affinity_reject_request",
        "affinity_report_load",
    ):
        assert needed in names


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[n for n, _ in SPECS])
def test_hook_is_documented_in_docs(name: str, spec: object) -> None:
    args = ", ".join(inspect.signature(spec).parameters)  # type: ignore[arg-type]
    assert f"`{name}({args})`" in DOCS.read_text(), f"{name}({args}) missing from docs/hooks.md"


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[n for n, _ in SPECS])
def test_hook_is_typed_and_has_a_docstring(name: str, spec: object) -> None:
    signature = inspect.signature(spec)  # type: ignore[arg-type]
    assert signature.return_annotation is not inspect.Signature.empty
    for param in signature.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}.{param.name}"
        assert f":param {param.name}:" in (spec.__doc__ or ""), f"{name} lacks :param {param.name}:"
    assert (spec.__doc__ or "").strip()


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[n for n, _ in SPECS])
def test_first_result_hooks_say_so(name: str, spec: object) -> None:
    opts = getattr(spec, "affinity_spec", {})
    if opts.get("firstresult"):
        assert re.search(r"first\s+non-None\s+result", spec.__doc__ or "")


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[n for n, _ in SPECS])
def test_manager_has_a_method_for_every_hook(name: str, spec: object) -> None:
    short = name.removeprefix("affinity_")
    candidates = {
        short,
        short + "s",
        short.replace("make_health_source", "make_health_sources"),
        short.replace("declare_", "declared_"),
    }
    assert any(hasattr(PluginManager, c) for c in candidates), f"no facade method for {name}"


def test_only_the_manager_calls_pm_hook() -> None:
    package = Path(hookspecs.__file__).parent
    callers = [
        p for p in package.rglob("*.py") if ".hook." in p.read_text() and p.name != "manager.py"
    ]
    assert callers == []
