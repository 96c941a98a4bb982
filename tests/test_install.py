"""Installed, not cloned: wheels in a fresh virtualenv run ``affinity dev`` in an empty folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

import affinity
from affinity.web.tls import client_context
from tests.test_dev import alive, assign_and_call, running_dev

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = [
    ROOT,
    ROOT / "plugins" / "affinity-ipfilter",
    ROOT / "plugins" / "affinity-ratelimit",
]


READ_METADATA = """
import importlib.metadata as m, affinity
d = m.distribution("affinity-lb")
print(d.version, d.metadata["License-Expression"])
print(any(str(f).endswith("LICENSE") for f in d.files))
print(any(r.startswith(("ruff", "mypy")) for r in d.requires or ()))
assert d.version == affinity.__version__
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the three wheels (and their dependencies) installed."""
    base = tmp_path_factory.mktemp("install")
    wheels = base / "wheels"
    quiet = ["-q", "--disable-pip-version-check"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *quiet, "--no-deps", "-w", str(wheels)]
        + [str(d) for d in DISTRIBUTIONS],
        check=True,
        capture_output=True,
        cwd=base,
    )
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", *quiet, *sorted(map(str, wheels.glob("*.whl")))],
        check=True,
        capture_output=True,
        cwd=base,
    )
    return env_dir


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_installed_wheels_run_dev_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}

    def run(*argv: str) -> str:
        done = subprocess.run(
            argv, cwd=empty, env=env, capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout

    listed = run(str(installed / "bin" / "affinity"), "plugins")
    assert "ipfilter" in listed and "ratelimit" in listed, listed
    metadata = run(str(installed / "bin" / "python"), "-c", READ_METADATA).split()
    assert metadata == [affinity.__version__, "Apache-2.0", "True", "False"], metadata
    command = [str(installed / "bin" / "affinity"), "dev"]
    with running_dev(tmp_path, command, cwd=empty, env=env) as (proc, out, pids):
        referral, ca, _ = assign_and_call(out, empty)
        assert ca.is_file() and ca.is_relative_to(empty / ".affinity-dev"), out
        # The dashboard's assets come from the installed package, not from this checkout.
        with httpx.Client(verify=client_context(ca), timeout=5) as client:
            for asset in ("dashboard.js", "dashboard.css", "icon.svg"):
                served = client.get(f"{referral}/dashboard/static/{asset}")
                assert served.status_code == 200 and served.content, asset
            assert "Admin token" in client.get(f"{referral}/dashboard").text
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert not [pid for pid in pids if alive(pid)]
