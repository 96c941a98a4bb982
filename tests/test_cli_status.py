"""``affinity status``: a table or JSON of the fleet, with rates; no token on the command line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from affinity.cli import status
from affinity.cli.main import main
from affinity.testing import Deployment
from tests.fleets import static_referral


@pytest.fixture(scope="module")
def referral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with static_referral(tmp_path_factory.mktemp("status")) as d:
        yield d


def affinity_status(
    d: Deployment, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "affinity", "status", "--referral", d.referral_url]
    command += ["--cacert", str(d.ca), *args]
    environment = {**os.environ, "COLUMNS": "160", **(env or {})}
    environment.pop("AFFINITY_ADMIN_TOKEN", None) if env is None else None
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60)


def token_file(d: Deployment) -> str:
    return str(d.dir / "admin-token")


def test_json_lists_every_server_with_its_rate(referral: Deployment) -> None:
    with referral.client(base_url=referral.referral_url) as c:
        c.get("/v1/assign")
    done = affinity_status(
        referral, "--json", "--interval", "0.2", "--admin-token-file", token_file(referral)
    )
    assert done.returncode == 0, done.stderr
    body = orjson.loads(done.stdout)
    assert [s["id"] for s in body["servers"]] == ["s1", "s2"]
    assert all(s["assignments_per_second"] == 0.0 for s in body["servers"])
    assert sum(s["assignments"] for s in body["servers"]) >= 1
    assert body["services"]["web"]["policy"] == "round_robin"


def test_the_table_shows_health_load_weight_and_draining(referral: Deployment) -> None:
    done = affinity_status(
        referral, "--interval", "0", env={"AFFINITY_ADMIN_TOKEN": referral.admin_token}
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert referral.referral_url in lines[0] and "registry embedded (fresh)" in lines[0]
    header = next(line for line in lines if "SERVER" in line)
    for column in ("SERVICE", "HEALTH", "LOAD", "WEIGHT", "DRAINING", "ASSIGN/S", "LAST FAILURE"):
        assert column in header
    row = next(line for line in lines if " s1 " in line)
    assert "passing" in row and "0 clients, 0 in flight" in row


def test_watch_refreshes_count_times(referral: Deployment) -> None:
    done = affinity_status(
        referral,
        "--watch",
        "--count",
        "3",
        "--interval",
        "0.1",
        "--json",
        "--admin-token-file",
        token_file(referral),
    )
    assert done.returncode == 0, done.stderr
    documents = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(documents) == 3
    assert documents[0]["time"] < documents[1]["time"] < documents[2]["time"]
    table = affinity_status(
        referral,
        "--watch",
        "--count",
        "2",
        "--interval",
        "0.1",
        "--admin-token-file",
        token_file(referral),
    )
    assert table.stdout.count("LAST FAILURE") == 2


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "no admin token: pass --admin-token-file FILE or set AFFINITY_ADMIN_TOKEN"),
        ((), {"AFFINITY_ADMIN_TOKEN": "wrong"}, "answered 401: a valid 'Authorization: Bearer"),
        (("--admin-token-file", "/nonexistent/token"), {}, "cannot read --admin-token-file"),
    ],
)
def test_errors_say_what_to_do(
    referral: Deployment, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    done = affinity_status(referral, "--interval", "0", *args, env=env)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_token_is_not_taken_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--admin-token", "secret", "--referral", "https://x"]) == 2
    assert "unrecognized arguments: --admin-token" in capsys.readouterr().err


def test_an_unreachable_referral_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "token").write_text("t")
    code = main(
        [
            "status",
            "--referral",
            "https://127.0.0.1:9",
            "--interval",
            "0",
            "--admin-token-file",
            str(tmp_path / "token"),
        ]
    )
    assert code == 2
    assert "cannot reach https://127.0.0.1:9" in capsys.readouterr().err


def _document(time: float, assignments: int) -> dict[str, Any]:
    server = {
        "id": "s1",
        "service": "web",
        "health": "passing",
        "draining": False,
        "weight": 2,
        "effective_weight": 1.0,
        "assignments": assignments,
        "load": {"active_clients": 3, "inflight": 1, "capacity": 10},
        "last_failure": {"at": time - 30, "reason": "timeout"},
    }
    return {
        "version": "x",
        "time": time,
        "servers": [server],
        "registry": {"name": "embedded", "stale": False, "stale_reason": "", "index": 3},
        "services": {"web": {"total": 1, "assignable": 1, "below_threshold": False}},
    }


def test_rates_are_the_difference_of_two_readings_over_their_time(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = iter([_document(100.0, 10), _document(102.0, 50)])
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=orjson.dumps(next(documents)))

    monkeypatch.setenv("AFFINITY_ADMIN_TOKEN", "sesame")
    args = argparse.Namespace(
        referral="https://r.test",
        admin_token_file=None,
        cacert=None,
        interval=0.01,
        watch=False,
        count=None,
        json=False,
    )
    assert status.run(args, transport=httpx.MockTransport(answer)) == 0
    out = capsys.readouterr().out
    assert "20.0" in out  # (50 - 10) / 2 s
    assert "1.0 of 2" in out and "3/10 clients, 1 in flight" in out and "timeout (30s ago)" in out
    assert all(r.headers["authorization"] == "Bearer sesame" for r in seen)
    assert all("sesame" not in str(r.url) for r in seen)
