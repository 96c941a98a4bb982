"""``/openapi.json`` describes every route the referral serves, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from affinity.config import load
from affinity.referral.app import ReferralServer
from affinity.referral.openapi import openapi_spec
from affinity.testing import Deployment
from affinity.version import __version__

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _routes(tmp_path: Path, prefix: str) -> set[tuple[str, str]]:
    deployment = Deployment(tmp_path, referral=f'redirect_prefix = "{prefix}"')
    app = ReferralServer(load(str(deployment.config))).create_app()
    found = set()
    for route in app.router.routes:
        # Sanic writes "<server_id:str>" and "<path:path>"; OpenAPI writes "{server_id}".
        path = "/" + re.sub(r"<(\w+)(?::[^>]+)?>", r"{\1}", route.path)
        found |= {(path, method.lower()) for method in route.methods}
    return found


def _operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, m) for path, item in spec["paths"].items() for m in METHODS if m in item}


@pytest.mark.parametrize("prefix", ["/go", "/r/"])
def test_every_route_is_in_the_spec_and_every_operation_is_a_route(
    tmp_path: Path, prefix: str
) -> None:
    spec = openapi_spec(prefix)
    routes = _routes(tmp_path, prefix)
    assert routes == _operations(spec)
    for must in ("/v1/settings", prefix.rstrip("/") + "/{path}", "/dashboard/api/status"):
        assert (must, "get") in routes


def test_every_operation_has_a_unique_operation_id() -> None:
    spec = openapi_spec("/go")
    ids = [spec["paths"][p][m]["operationId"] for p, m in sorted(_operations(spec))]
    assert len(ids) == len(set(ids)) == len(_operations(spec))
    assert all(re.fullmatch(r"[a-z][A-Za-z]+", op) for op in ids), ids


def test_spec_names_servers_and_the_package_version() -> None:
    spec = openapi_spec("/go")
    assert spec["info"]["version"] == __version__
    assert spec["servers"] and spec["servers"][0]["url"] == "/"
    assert spec["openapi"] == "3.1.0"


def test_every_reference_resolves() -> None:
    spec = openapi_spec("/go")
    text = repr(spec)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in spec["components"]["schemas"], ref
    for path, item in spec["paths"].items():
        for method in METHODS:
            for scheme in item.get(method, {}).get("security", []):
                assert set(scheme) <= set(spec["components"]["securitySchemes"]), (path, method)
