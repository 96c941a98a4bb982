"""Installed, not cloned: the wheels' metadata is ready for PyPI, and the wheels in a fresh
virtualenv run ``affinity dev`` in an empty folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import venv
import zipfile
from email.message import Message
from email.parser import Parser
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
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text()
QUIET = ["-q", "--disable-pip-version-check"]


READ_METADATA = """
import importlib.metadata as m, affinity
d = m.distribution("affinity-lb")
print(d.version, d.metadata["License-Expression"])
print(any(str(f).endswith("LICENSE") for f in d.files))
print(any(r.startswith(("ruff", "mypy")) for r in d.requires or ()))
assert d.version == affinity.__version__
"""


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The wheels of affinity-lb and the two first-party plugins, built from this checkout."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *QUIET, "--no-deps", "-w", str(out)]
        + [str(d) for d in DISTRIBUTIONS],
        check=True,
        capture_output=True,
        cwd=out,
    )
    return sorted(out.glob("*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheels: list[Path]) -> Path:
    """A fresh virtualenv with the three wheels (and their dependencies) installed."""
    base = tmp_path_factory.mktemp("install")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", *QUIET, *map(str, wheels)],
        check=True,
        capture_output=True,
        cwd=base,
    )
    return env_dir


def wheel_metadata(wheel: Path) -> tuple[Message, list[str]]:
    """A wheel's METADATA, parsed, and the names of the files it holds."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (path,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(path).decode()), names


# A link a page on PyPI cannot follow: a markdown link, image or reference definition, or an
# HTML href/src, whose target is neither an absolute http(s) URL nor an anchor on the page.
RELATIVE_LINK = re.compile(
    r"""(?:\]\(\s*<?|^\s*\[[^\]]+\]:\s*<?|(?:href|src)\s*=\s*["']?)(?!https?://|mailto:|\#)([^\s)>"']+)""",
    re.MULTILINE,
)


def relative_links(text: str) -> list[str]:
    return RELATIVE_LINK.findall(text)


def test_relative_links_are_found() -> None:
    text = "[a](docs/a.md) [b](https://x.test/b) ![i](img.png) [c](#c)\n[d]: ../d.md\n<a href='e'>"
    assert relative_links(text) == ["docs/a.md", "img.png", "../d.md", "e"]


# The classifiers every distribution carries (each may add topics of its own).
CLASSIFIERS = {
    "Development Status :: 3 - Alpha",
    "Intended Audience :: Developers",
    "Intended Audience :: System Administrators",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3 :: Only",
    "Programming Language :: Python :: 3.11",
    "Typing :: Typed",
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_metadata_is_ready_for_pypi(wheels: list[Path]) -> None:
    names = {wheel.name.split("-")[0].replace("_", "-") for wheel in wheels}
    assert names == {"affinity-lb", "affinity-ipfilter", "affinity-ratelimit"}, wheels
    for wheel in wheels:
        meta, files = wheel_metadata(wheel)
        name = meta["Name"]
        assert meta["License-Expression"] == "Apache-2.0", name
        assert f"{wheel.name.split('-')[0]}-{meta['Version']}.dist-info/licenses/LICENSE" in files
        assert meta["Author"] == "The affinity contributors", name
        assert set(meta.get_all("Classifier") or ()) >= CLASSIFIERS, name
        assert meta["Summary"] and meta["Keywords"], name
        # Development tools are a dependency group of the checkout, never a published extra.
        requires = meta.get_all("Requires-Dist") or []
        assert not [r for r in requires if re.match(r"(ruff|mypy|import-linter|mutmut)\b", r)]
        # The long description: `pip install` of this distribution comes first, and every
        # link works on PyPI.
        assert meta["Description-Content-Type"] == "text/markdown", name
        description = meta.get_payload()
        assert isinstance(description, str)
        first_command = re.search(r"^(?:\$ )?(pip|affinity|python|\./)\S*.*$", description, re.M)
        assert first_command is not None and first_command.group(0) == f"pip install {name}"
        assert relative_links(description) == [], name
        urls = meta.get_all("Project-URL") or []
        assert all(url.partition(", ")[2].startswith("https://") for url in urls), urls
        if not urls:
            # No public home yet: the decision, and where to set the URLs, is written down.
            assert "### Project URLs" in CONTRIBUTING and "[project.urls]" in CONTRIBUTING


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
