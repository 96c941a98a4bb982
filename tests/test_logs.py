"""Logging: one line per event, the level and format asked for, the access log, the start-up
line, a quiet shutdown, and repeated failures logged with back-off.

Most tests run the real ``affinity`` command (a referral, an app server) on
loopback with TLS and read what it wrote; :class:`Repeated` and the JSON
formatter are also checked in this process.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from affinity.logs import JsonFormatter, LogSettings, Repeated
from affinity.process import ChildProcess
from affinity.protocol import COOKIE, TOKEN_HEADER
from affinity.testing import Deployment, wait_until
from tests.test_dev import running_dev

JSON = ["--log-format", "json"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def json_lines(proc: ChildProcess) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed as JSON (fails on a line that is not)."""
    lines = []
    for line in proc.output().splitlines():
        parsed = orjson.loads(line)
        assert isinstance(parsed, dict), line
        lines.append(parsed)
    return lines


def graceful_stop(proc: ChildProcess) -> None:
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.output()


# -- the real command ---------------------------------------------------------------------


def test_one_line_per_event_a_start_up_line_and_a_quiet_shutdown(tmp_path: Path) -> None:
    with Deployment(tmp_path) as d:
        referral = d.start_referral()
        server = d.start_server("s1")
        with d.client() as c:
            c.get(d.referral_url + "/healthz").raise_for_status()
            c.get(d.server_urls["s1"] + "/.well-known/affinity/health").raise_for_status()
        graceful_stop(server)
        graceful_stop(referral)
        for proc in (referral, server):
            out = proc.output()
            assert out.count("Starting worker") == 1, out  # once, not once per handler
            assert out.count("Server Stopped") == 1, out
            assert not re.search(r"^Main ", out, re.MULTILINE), out  # Sanic's own format
            assert "was cancelled before it completed" not in out
            assert "sanic.access" not in out, "the access log is off unless asked for"
        assert (
            f"INFO affinity.referral: referral serving {d.referral_url} "
            f"(pid {referral.pid}, 1 worker)" in referral.output()
        )
        assert (
            f"INFO affinity.server: app server s1 serving {d.server_urls['s1']} "
            f"(pid {server.pid}, 1 worker)" in server.output()
        )


@pytest.mark.parametrize("where", ["before the command", "after the command"])
def test_log_level_warning_hides_sanic_info_lines_wherever_it_is_given(
    tmp_path: Path, where: str
) -> None:
    with Deployment(tmp_path, env={"AFFINITY_DISABLE_PLUGINS": "nosuchplugin"}) as d:
        command = ["referral", "--config", str(d.config)]
        level = ["--log-level", "WARNING"]
        proc = ChildProcess(
            "referral",
            [*level, *command] if where == "before the command" else [*command, *level],
            env=d.env,
            log=tmp_path / "referral.log",
        )
        d.referrals.append(proc)
        d.wait_http(d.referral_url + "/healthz", proc)
        graceful_stop(proc)
        out = proc.output()
        assert "WARNING affinity.plugins: AFFINITY_DISABLE_PLUGINS names 'nosuchplugin'" in out
        assert " INFO " not in out, out


def test_json_lines_and_the_access_log_in_every_worker_without_secrets(tmp_path: Path) -> None:
    secret_token, secret_cookie, secret_query = "tok-SECRET-1", "cookie-SECRET-2", "q-SECRET-3"
    with Deployment(tmp_path, referral="workers = 2") as d:
        referral = d.start_referral(args=[*JSON, "--access-log"])
        server = d.start_server("s1", args=["--access-log"])
        wait_until(lambda: referral.output().count("Worker ready") == 2, 30, what="two workers")
        headers = {TOKEN_HEADER: secret_token, "Cookie": f"{COOKIE}={secret_cookie}"}
        with d.client() as c:
            for _ in range(4):
                c.get(f"{d.referral_url}/v1/assign?service=web&x={secret_query}", headers=headers)
            token = d.token("s1")
            answer = c.get(
                d.server_urls["s1"] + "/?q=" + secret_query,
                headers={TOKEN_HEADER: token, "Cookie": f"{COOKIE}={token}"},
            )
            assert answer.status_code == 200
        lines = json_lines(referral)
        for line in lines:
            assert {"time", "level", "logger", "message", "pid"} <= set(line), line
            assert line["role"] == "referral"
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        serving = [x for x in lines if "referral serving" in x["message"]]
        assert [x["message"] for x in serving] == [
            f"referral serving {d.referral_url} (pid {referral.pid}, 2 workers)"
        ]
        workers = {x["pid"] for x in lines if x["message"].startswith("Worker ready")}
        assert len(workers) == 2 and referral.pid not in workers, "each worker logs as asked"
        access = [x for x in lines if x["logger"] == "sanic.access"]
        assigns = [x for x in access if x["path"] == "/v1/assign"]
        assert len(assigns) == 4, access  # one line per request, none per closed connection
        assert all(x["method"] == "GET" and isinstance(x["status"], int) for x in assigns)
        assert all(x["pid"] in workers and x["client"].startswith("127.0.0.1:") for x in access)
        shown = next(  # the access line docs/configuration.md shows has the same fields
            orjson.loads(line)
            for line in DOCS.read_text(encoding="utf-8").splitlines()
            if line.startswith("{") and '"sanic.access"' in line
        )
        assert set(shown) == set(assigns[0])
        # The app server's text access line, with the path but not the query or the token.
        assert re.search(r"INFO sanic\.access: 127\.0\.0\.1:\d+ GET / 200 ", server.output())
        for out in (referral.output(), server.output()):
            for secret in (secret_token, secret_cookie, secret_query, token):
                assert secret not in out


def test_an_unreachable_referral_is_logged_with_back_off(tmp_path: Path) -> None:
    watched = ("shared settings unavailable", "heartbeat failed")
    with Deployment(tmp_path) as d:
        server = d.start_server("s1", args=[*JSON, "--log-level", "DEBUG"])

        def failures(what: str) -> list[dict[str, Any]]:
            return [x for x in json_lines(server) if x["message"].startswith(what)]

        def failed_four_times() -> bool:
            return all(len(failures(what)) >= 4 for what in watched)

        wait_until(failed_four_times, 30, what="4 failures of each")
        for what in watched:
            seen = failures(what)
            assert [x["failures"] for x in seen] == list(range(1, len(seen) + 1))
            for line in seen:  # the first, then every 10th; the others only at DEBUG
                shown = line["failures"] == 1 or line["failures"] % 10 == 0
                assert line["level"] == ("WARNING" if shown else "DEBUG"), line
        d.start_referral()

        def recovered() -> bool:
            said = [x["message"] for x in json_lines(server) if x["level"] == "INFO"]
            return all(
                any(m.startswith(again) for m in said)
                for again in ("shared settings available again after", "heartbeat answered again")
            )

        wait_until(recovered, 30, what="both loops saying they recovered")


def test_dev_passes_the_log_format_to_its_children(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "affinity", "dev", "--dir", str(tmp_path / "dev")]
    with running_dev(tmp_path, [*command, "--log-format", "json"]) as (proc, _, _pids):
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
    logs = tmp_path / "dev" / "logs"
    for name, role, serving in [
        ("referral", "referral", "referral serving https://127.0.0.1:"),
        ("s1", "server", "app server s1 serving https://127.0.0.1:"),
    ]:
        lines = [orjson.loads(line) for line in (logs / f"{name}.log").read_text().splitlines()]
        assert all(line["role"] == role for line in lines), lines
        assert any(line["message"].startswith(serving) for line in lines), lines


# -- in this process -------------------------------------------------------------------


def test_repeated_logs_the_first_failure_changes_and_every_nth(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "test.repeated")
    failures = Repeated(logging.getLogger("test.repeated"), "peer unreachable", every=3)
    shown = [failures.failed(reason) for reason in ["refused"] * 7 + ["timeout", "timeout"]]
    assert shown == [True, False, True, False, False, True, False, True, True]
    assert [r.levelno for r in caplog.records] == [
        logging.WARNING if s else logging.DEBUG for s in shown
    ]
    assert caplog.records[0].getMessage() == "peer unreachable: refused"
    assert caplog.records[2].getMessage() == "peer unreachable (3 failures in a row): refused"
    assert caplog.records[7].getMessage() == "peer unreachable (8 failures in a row): timeout"
    caplog.clear()
    assert failures.recovered("peer back")
    assert [r.getMessage() for r in caplog.records] == ["peer back after 9 failures"]
    assert not failures.recovered("peer back"), "nothing to say after a success"
    assert failures.failed("refused"), "a new run starts with a logged failure"


def test_repeated_sends_a_traceback_with_the_lines_it_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "test.repeated")
    failures = Repeated(logging.getLogger("test.repeated"), "broken", level=logging.ERROR)
    error = KeyError("x")
    failures.failed(error, exc_info=error, retry_in=0.25)
    failures.failed(error, exc_info=error)
    first, second = caplog.records
    assert (first.levelno, first.exc_info is not None) == (logging.ERROR, True)
    assert first.getMessage() == "broken: 'x'; retry in 0.2s"
    assert (second.levelno, second.exc_info) == (logging.DEBUG, None)


def test_a_json_line_carries_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "it %s", ("failed",), None)
        record.exc_info = sys.exc_info()
    line = JsonFormatter("referral").format(record)
    assert "\n" not in line
    parsed = orjson.loads(line)
    assert parsed["message"] == "it failed" and parsed["role"] == "referral"
    assert "ValueError: bad\nvalue" in parsed["exc"]


def test_log_settings_refuse_an_unknown_level_or_format() -> None:
    with pytest.raises(ValueError, match="level"):
        LogSettings(level="LOUD")
    with pytest.raises(ValueError, match="format"):
        LogSettings(format="xml")
