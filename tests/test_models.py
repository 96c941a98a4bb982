"""Value objects: the fast constructor used on the request path makes the very same objects."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from affinity.models import Assignment, AssignRequest, RequestInfo, Server, fast_constructor

REQUEST = AssignRequest(service="web", client_id="c1", avoid=frozenset({"s9"}), previous="s2")
CASES: list[tuple[type[Any], dict[str, Any]]] = [
    (
        RequestInfo,
        {
            "role": "server",
            "method": "GET",
            "path": "/x",
            "client_ip": "192.0.2.1",
            "client_id": "c1",
            "server_id": "s1",
            "headers": {"host": "h"},
        },
    ),
    (
        AssignRequest,
        {
            "service": "web",
            "client_id": "c1",
            "avoid": frozenset({"s9"}),
            "previous": None,
            "client_ip": "192.0.2.1",
        },
    ),
    (
        Assignment,
        {
            "request": REQUEST,
            "server": Server(id="s1", service="web", url="https://s1.example"),
            "token": "t",
            "expires_in": 60,
            "sticky": False,
        },
    ),
]


@pytest.mark.parametrize(("cls", "values"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_fast_constructor_makes_the_same_frozen_object(
    cls: type[Any], values: dict[str, Any]
) -> None:
    assert set(values) == {f.name for f in dataclasses.fields(cls)}  # every field covered
    made = fast_constructor(cls)(**values)
    reference = cls(**values)
    assert type(made) is cls
    assert made == reference
    assert repr(made) == repr(reference)
    if cls is AssignRequest:  # the others hold dicts (headers, a server's meta)
        assert hash(made) == hash(reference)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__(next(iter(values)), "changed")


def test_fast_constructor_needs_every_field_by_keyword() -> None:
    make = fast_constructor(AssignRequest)
    with pytest.raises(TypeError):
        make(service="web", client_id="c1")
    with pytest.raises(TypeError):
        make("web", "c1", frozenset(), None, "")


def test_fast_constructor_refuses_what_it_cannot_copy() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("negative")

    with pytest.raises(TypeError, match="not a slotted dataclass"):
        fast_constructor(NoSlots)
    with pytest.raises(TypeError, match="__post_init__"):
        fast_constructor(Checked)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Base:
        x: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Derived(Base):
        y: int

    with pytest.raises(TypeError, match="derives from another class than object"):
        fast_constructor(Derived)
