"""Child affinity processes (affinity.process): logs, readiness, a failed start, stop with grace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from affinity.errors import ChildFailed
from affinity.process import TAIL_LINES, ChildProcess, stop, wait_answering
from affinity.testing import Deployment, free_port
from affinity.web.tls import client_context
from tests.server.apps import HOLDING

APP = HOLDING


def test_a_child_that_exits_early_fails_the_wait_with_the_end_of_its_log(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    child = ChildProcess(
        "the referral",
        ["referral", "--config", str(missing)],
        env=os.environ,
        log=tmp_path / "referral.log",
    )
    try:
        with pytest.raises(ChildFailed) as info:
            wait_answering(f"https://127.0.0.1:{free_port()}/", child, verify=True, timeout=30)
    finally:
        stop([child], grace=0)
    message = str(info.value)
    assert message.startswith("the referral exited with code 2 before https://127.0.0.1:")
    assert f"{missing}: file not found" in message, "the log's last lines are quoted"
    assert str(tmp_path / "referral.log") in message
    assert len(message.splitlines()) <= TAIL_LINES + 1


def test_a_child_that_runs_but_does_not_answer_fails_after_the_timeout(
    deployment: Deployment,
) -> None:
    referral = deployment.start_referral()
    nowhere = f"https://127.0.0.1:{free_port()}/healthz"
    with pytest.raises(ChildFailed, match=r"is running, but .* did not answer within 0.3s"):
        wait_answering(nowhere, referral, verify=client_context(deployment.ca), timeout=0.3)
    assert referral.alive()


def test_a_url_that_answers_500_fails_the_wait_at_once(deployment: Deployment) -> None:
    """A 500 is an error in the server, which waiting does not mend: the wait ends on it
    with its own message, well before a timeout of a minute."""
    deployment.start_referral()
    server = deployment.start_server("s1", app=APP)
    boom = deployment.server_urls["s1"] + "/boom"
    with pytest.raises(ChildFailed, match=r"is running, but .*/boom answered 500;") as info:
        wait_answering(boom, server, verify=client_context(deployment.ca), timeout=60)
    assert "did not answer" not in str(info.value)
    assert server.alive()


def test_stop_drains_within_the_grace_and_kills_without_one(deployment: Deployment) -> None:
    graceful = deployment.start_referral()
    port = free_port()
    killed = deployment.start_referral(port=port)
    stop([graceful], grace=10)
    assert graceful.returncode == 0, graceful.output()
    assert killed.alive()
    stop([killed], grace=0)
    assert killed.returncode == -9
