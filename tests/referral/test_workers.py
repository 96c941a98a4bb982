"""Several referral worker processes: shared registrations, and plugins passed in by code."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import types
from pathlib import Path

import httpx
import pytest

from affinity.config import Config, load
from affinity.errors import ConfigError
from affinity.plugin.manager import PluginManager
from affinity.referral.app import ReferralServer
from affinity.testing import Deployment, wait_until
from tests.referral import passed_plugins

ROOT = Path(__file__).resolve().parent.parent.parent


def test_two_workers_see_the_same_registrations(tmp_path: Path) -> None:
    # No health checks: w1 is a registration only, nothing listens there.
    with Deployment(tmp_path / "d", health="sources = []") as deployment:
        deployment.start_referral(env={"AFFINITY_REFERRAL_WORKERS": "2"})
        with deployment.admin() as admin:
            admin.put("/v1/servers/w1", json={"url": "https://w1.affinity.test:8443"})
        pids: set[int] = set()

        def both_workers_answered() -> bool:
            # A fresh connection each time: the kernel spreads them over the workers.
            # A worker that has not yet read the state file (it polls) answers 503;
            # only assignments of w1 count, and from two different workers.
            with deployment.client(base_url=deployment.referral_url) as c:
                assigned = c.get("/v1/assign")
                worker = c.get("/healthz").json()["worker"]
                if assigned.status_code == 200:
                    assert assigned.json()["server"]["id"] == "w1"
                    pids.add(worker)
            return len(pids) >= 2

        wait_until(both_workers_answered, 30, 0.0, "both workers answering")


def _launch(deployment: Deployment, plugins: str) -> subprocess.Popen[bytes]:
    """A referral started from code, as an embedding program would, with ``plugins=``."""
    code = (
        "import sys\n"
        "from affinity.config import load\n"
        "from affinity.referral.app import ReferralServer\n"
        "from tests.referral import passed_plugins\n"
        f"ReferralServer(load(sys.argv[1]), plugins={plugins}).run()\n"
    )
    with (deployment.dir / "embedded.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(deployment.config)],
            env={**deployment.env, "AFFINITY_REFERRAL_WORKERS": "2"},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its group holds the Sanic workers too: killed together
        )


def test_plugins_passed_in_reach_every_worker(deployment: Deployment) -> None:
    proc = _launch(deployment, "[passed_plugins, passed_plugins.Tag('blue')]")
    try:
        marked: set[int] = set()
        tagged: set[int] = set()

        def every_worker_has_both() -> bool:
            assert proc.poll() is None, (deployment.dir / "embedded.log").read_text()
            try:
                with deployment.client(base_url=deployment.referral_url) as c:
                    marked.add(c.get("/marked").json()["worker"])
                    tag = c.get("/tag").json()
            except httpx.HTTPError:
                return False  # not listening yet
            assert tag["tag"] == "blue"
            tagged.add(tag["worker"])
            return len(marked) == 2 and len(tagged) == 2

        wait_until(every_worker_has_both, 60, 0.0, "both workers serving the passed-in plugins")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # proc.kill() alone left both workers running
        proc.wait()


def _two_workers(tmp_path: Path) -> Config:
    return replace_section(load(Deployment(tmp_path / "d").config), workers=2)


def replace_section(config: Config, **changes: object) -> Config:
    return dataclasses.replace(config, referral=dataclasses.replace(config.referral, **changes))


def test_the_worker_factory_rebuilds_with_the_same_config_and_plugins(tmp_path: Path) -> None:
    config = replace_section(_two_workers(tmp_path), default_service="elsewhere")
    server = ReferralServer(config, plugins=[passed_plugins, passed_plugins.Tag("green")])
    factory = pickle.loads(pickle.dumps(server.worker_factory()))  # as Sanic sends it
    app = factory()
    ctx = app.ctx.affinity
    assert ctx.config == config  # not re-read from the file: code-made changes kept
    assert ctx.config.referral.default_service == "elsewhere"
    assert {"marked", "tag"} <= {route.name.rsplit(".", 1)[-1] for route in app.router.routes}
    assert ctx.manager is not server.manager


def test_a_plugin_that_cannot_reach_a_worker_is_refused(tmp_path: Path) -> None:
    class Local:  # defined in a function: pickle cannot name it
        pass

    server = ReferralServer(_two_workers(tmp_path), plugins=[Local()])
    with pytest.raises(ConfigError, match="cannot be sent to a worker process") as caught:
        server.worker_factory()
    assert caught.value.key == "referral.workers"


def test_a_module_made_in_memory_is_refused(tmp_path: Path) -> None:
    server = ReferralServer(_two_workers(tmp_path), plugins=[types.ModuleType("made_here")])
    with pytest.raises(ConfigError, match="'made_here' cannot be imported by name"):
        server.worker_factory()


def test_a_manager_passed_in_is_refused_with_workers(tmp_path: Path) -> None:
    server = ReferralServer(_two_workers(tmp_path), manager=PluginManager())
    with pytest.raises(ConfigError, match="pass the plugins as plugins=") as caught:
        server.run()
    assert caught.value.key == "referral.workers"
