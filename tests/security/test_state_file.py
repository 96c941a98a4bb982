"""The state file is written safely where others could plant files: no symlink is followed.

It used to be written through ``.state.json.<pid>.tmp``, opened with
``O_CREAT|O_TRUNC``: a symlink planted under that predictable name made the
referral overwrite whatever it pointed at.
"""

from __future__ import annotations

import os
import stat

from affinity.testing import Deployment


def test_registering_writes_the_state_file_without_following_planted_links(
    deployment: Deployment,
) -> None:
    d = deployment
    run = d.dir / "run"
    proc = d.start_referral(env={"AFFINITY_REFERRAL_STATE_FILE": "run/state.json"})
    victim = d.dir / "victim"
    victim.write_text("keep me")
    # The names a writer might use: the old predictable temporary name, the lock and the file.
    os.makedirs(run, exist_ok=True)
    for name in (f".state.json.{proc.pid}.tmp", "state.json"):
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
    with d.admin() as admin:
        r = admin.put("/v1/servers/s1", json={"url": "https://s1.affinity.test:8443"})
        assert r.status_code == 200, r.text
    assert victim.read_text() == "keep me"
    state = run / "state.json"
    assert not state.is_symlink()
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert b'"s1"' in state.read_bytes()
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert leftovers == []


def test_the_state_directory_is_created_private(deployment: Deployment) -> None:
    d = deployment
    d.start_referral(env={"AFFINITY_REFERRAL_STATE_FILE": "private/run/state.json"})
    with d.admin() as admin:
        r = admin.put("/v1/servers/s1", json={"url": "https://s1.affinity.test:8443"})
        assert r.status_code == 200, r.text
    for directory in (d.dir / "private", d.dir / "private" / "run"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_lock_planted_as_a_symlink_is_not_followed(deployment: Deployment) -> None:
    d = deployment
    os.makedirs(d.dir / "run", mode=0o700)
    missing = d.dir / "created-through-the-link"
    (d.dir / "run" / "state.json.lock").symlink_to(missing)
    d.start_referral(env={"AFFINITY_REFERRAL_STATE_FILE": "run/state.json"})
    with d.admin() as admin:
        r = admin.put("/v1/servers/s1", json={"url": "https://s1.affinity.test:8443"})
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "registry_unavailable"
    assert "state file" in r.json()["detail"]
    assert not missing.exists()
