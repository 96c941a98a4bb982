"""``affinity check`` runs the checks start-up runs: every error listed, secrets masked in
``--print``; ``affinity referral`` and ``affinity serve`` refuse the same errors before
anything listens. Each test runs the real command in a child process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from affinity.testing import HELLO_APP, Deployment, free_port

CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith("AFFINITY_") and k != "CONSUL_HTTP_TOKEN"
}


def affinity(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``affinity ARGS`` in its own session; check that nothing of it is left running."""
    with subprocess.Popen(
        [sys.executable, "-m", "affinity", *args],
        cwd=cwd,
        env={**CLEAN_ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                left = True  # something of the group was still there
            except ProcessLookupError:
                left = False
    assert not left, "a worker or child outlived the command"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


BROKEN = """
[referral]
tls_cert = "missing/cert.pem"
tls_key = "missing/key.pem"

[tokens]
keys_file = "no-keys.json"

[registry]
backend = "consul"
[registry.options]
kv-prefix = "affinity/"

[plugins.ratelimitt]

[services.web]

[server]
id = "s1"
referral_url = "https://127.0.0.1:8400"
tls_cert = "missing/cert.pem"
tls_key = "missing/key.pem"
"""


def test_check_lists_every_error_of_both_roles_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BROKEN)
    result = affinity("check", "--config", "a.toml", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    for expected in (
        "plugins.ratelimitt: no loaded plugin has this table; did you mean 'ratelimit'?",
        "tokens.keys_file: key file",
        "referral.tls_cert: certificate file",
        "server.tls_cert: certificate file",
    ):
        assert sum(expected in line for line in errors) == 1, (expected, result.stderr)
    assert "a.toml: failed (referral, server): 4 errors" in result.stderr
    assert "Traceback" not in result.stderr
    # Once the table is spelled right, the plugins load and their parts are checked too.
    (tmp_path / "a.toml").write_text(BROKEN.replace("ratelimitt", "ratelimit"))
    result = affinity("check", "--config", "a.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("registry.options.kv-prefix") == 1, result.stderr
    assert "a.toml: failed (referral, server): 4 errors" in result.stderr


def test_referral_and_serve_refuse_what_check_reports_before_any_worker(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BROKEN.replace('backend = "consul"', 'backend = "embedded"'))
    check = affinity("check", "--config", "a.toml", cwd=tmp_path)
    reported = {
        line.split("error: ", 1)[1] for line in check.stderr.splitlines() if "error: " in line
    }
    for command, app in (("referral", ()), ("serve", (HELLO_APP,))):
        result = affinity(command, *app, "--config", "a.toml", cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert lines and all(line.startswith(f"affinity {command}: error: ") for line in lines)
        refused = {line.split("error: ", 1)[1] for line in lines}
        assert refused <= reported and len(refused) >= 3, result.stderr
        assert "Starting worker" not in result.stderr and "Traceback" not in result.stderr


def test_a_server_without_a_credential_is_one_line_before_any_worker(tmp_path: Path) -> None:
    with Deployment(tmp_path / "d") as d:
        env = {"AFFINITY_SERVER_ID": "s1", "AFFINITY_SERVER_LISTEN": f"127.0.0.1:{free_port()}"}
        config = d.config.read_text().replace('admin_token_file = "server-admin-token"', "")
        d.config.write_text(config)
        result = affinity("serve", HELLO_APP, "--config", str(d.config), cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "server.registration_token_file: registering with the referral needs" in result.stderr


@pytest.mark.parametrize(("services", "counted"), [(1, "1 service;"), (2, "2 services;")])
def test_check_ok_counts_services(tmp_path: Path, services: int, counted: str) -> None:
    with Deployment(tmp_path / "d") as d:
        text = d.config.read_text() + "".join(f"[services.x{i}]\n" for i in range(services - 1))
        d.config.write_text(text)
        result = affinity("check", "--config", str(d.config), "--role", "referral", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"ok (referral; {counted}" in result.stdout


def test_check_print_shows_the_environment_applied_and_masks_secrets(tmp_path: Path) -> None:
    admin, consul = "a" * 40, "consul-acl-token-value"
    env = {
        "AFFINITY_ADMIN_TOKEN": admin,
        "AFFINITY_CONSUL_TOKEN": consul,
        "AFFINITY_HEALTH_FALL": "5",
        "AFFINITY_REGISTRY_OPTIONS_PASSWORD": "from-env-password",
    }
    (tmp_path / "a.toml").write_text(
        '[health]\nfall = 3\n[registry.options]\napi_secret = "file-secret"\nkv_prefix = "a/"\n'
    )
    result = affinity("check", "--config", "a.toml", "--print", cwd=tmp_path, env=env)
    doc = json.loads(result.stdout)
    assert doc["health"]["fall"] == 5 and "health.fall" in doc["from_environment"]
    assert doc["environment"]["AFFINITY_ADMIN_TOKEN"] == "********"
    assert doc["environment"]["AFFINITY_CONSUL_TOKEN"] == "********"
    assert doc["registry"]["options"] == {
        "api_secret": "********",
        "kv_prefix": "a/",
        "password": "********",
    }
    for secret in (admin, consul, "file-secret", "from-env-password"):
        assert secret not in result.stdout and secret not in result.stderr
    # The embedded registry takes no options: the check fails, and says so after the print.
    assert result.returncode == 2 and "registry.options" in result.stderr


def test_a_private_file_open_to_others_is_a_warning_in_check_and_at_start_up(
    tmp_path: Path,
) -> None:
    with Deployment(tmp_path / "d") as d:
        (d.dir / "keys.json").chmod(0o644)
        args = ("check", "--config", str(d.config), "--role", "referral")
        result = affinity(*args, cwd=tmp_path)
        warning = "tokens.keys_file: " + repr(str(d.dir / "keys.json")) + " is open to group"
        assert result.returncode == 0 and warning in result.stderr
        assert affinity(*args, "--strict", cwd=tmp_path).returncode == 2
        d.start_referral()  # the warning is logged before it listens
        log = (d.dir / "referral-0.log").read_text()
    assert warning in log


@pytest.mark.parametrize("workers", [1, 2])
def test_an_address_in_use_is_one_line_naming_the_key(tmp_path: Path, workers: int) -> None:
    with Deployment(tmp_path / "d", referral=f"workers = {workers}") as d, socket.socket() as held:
        held.bind(("127.0.0.1", d.referral_port))
        held.listen()
        result = affinity("referral", "--config", str(d.config), cwd=tmp_path)
        port = free_port()
        held_too = socket.socket()
        held_too.bind(("127.0.0.1", port))
        held_too.listen()
        env = {
            "AFFINITY_SERVER_ID": "s1",
            "AFFINITY_SERVER_LISTEN": f"127.0.0.1:{port}",
            "AFFINITY_REGISTRATION_TOKEN": d.registration_token("s1"),
        }
        served = affinity("serve", HELLO_APP, "--config", str(d.config), cwd=tmp_path, env=env)
        held_too.close()
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"referral.listen: cannot listen on 127.0.0.1:{d.referral_port}" in result.stderr
    assert "in use" in result.stderr
    assert served.returncode == 2 and served.stderr.count("\n") == 1, served.stderr
    assert "environment variable AFFINITY_SERVER_LISTEN: server.listen: cannot listen" in (
        served.stderr
    )
