from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import pytest

from affinity.builtin.embedded.registry import EmbeddedRegistry, affinity_make_registry
from affinity.config import Config, load
from affinity.errors import ConfigError
from affinity.models import Server


def make_config(tmp_path: Path, state: bool = True) -> Config:
    path = tmp_path / "affinity.toml"
    text = """
[services.web]
servers = [{id = "c1", url = "https://c1.example.test"}]
"""
    if state:
        text = '[referral]\nstate_file = "state.json"\n' + text
    path.write_text(text)
    return load(path, env={})


def server(sid: str) -> Server:
    return Server(
        id=sid, service="web", url=f"https://{sid}.example.test", weight=2, meta={"zone": "eu"}
    )


async def started(config: Config) -> EmbeddedRegistry:
    registry = EmbeddedRegistry(config)
    await registry.start()
    return registry


def ids(view_servers: tuple[Server, ...]) -> list[str]:
    return [s.id for s in view_servers]


async def test_config_servers_and_runtime_registrations_survive_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    registry = await started(config)
    await registry.register(server("r1"))
    await registry.set_draining("c1", True)
    restarted = await started(config)
    view = await restarted.watch(-1, 0)
    assert ids(view.servers) == ["c1", "r1"]
    by_id = {s.id: s for s in view.servers}
    assert by_id["r1"].weight == 2 and dict(by_id["r1"].meta) == {"zone": "eu"}
    assert by_id["c1"].draining is True
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600


async def test_deregistering_a_config_server_persists(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    registry = await started(config)
    assert await registry.deregister("c1") is True
    assert await registry.deregister("c1") is False
    view = await (await started(config)).watch(-1, 0)
    assert ids(view.servers) == []
    await registry.register(Server(id="c1", service="web", url="https://c1.example.test"))
    assert ids((await registry.watch(-1, 0)).servers) == ["c1"]


async def test_watch_blocks_until_a_change_and_sees_other_processes(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first, second = await started(config), await started(config)
    index = (await second.watch(-1, 0)).index
    waiter = asyncio.create_task(second.watch(index, 10))
    await asyncio.sleep(0)
    assert not waiter.done()
    await first.register(server("r2"))
    view = await asyncio.wait_for(waiter, 5)
    assert view.index > index
    assert "r2" in ids(view.servers)


async def test_watch_returns_after_wait_without_change(tmp_path: Path) -> None:
    registry = await started(make_config(tmp_path, state=False))
    view = await registry.watch(-1, 0)
    again = await registry.watch(view.index, 0.05)
    assert again.index == view.index


async def test_corrupt_state_file_is_moved_aside_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="affinity.plugin.registry"):
        registry = await started(config)
    view = await registry.watch(-1, 0)
    assert ids(view.servers) == ["c1"]
    aside = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    assert "corrupt" in caplog.text and str(aside[0]) in caplog.text


async def test_wrong_shape_is_corrupt_too(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "state.json").write_bytes(orjson.dumps({"format": 1, "servers": []}))
    await started(config)
    assert list(tmp_path.glob("state.json.corrupt-*"))


async def test_settings_are_versioned(tmp_path: Path) -> None:
    registry = await started(make_config(tmp_path))
    first = await registry.put_settings("ipfilter", {"deny": ["10.0.0.0/8"]})
    second = await registry.put_settings("ipfilter", {"deny": []})
    assert (first.version, second.version) == (1, 2)
    view = await (await started(make_config(tmp_path))).watch(-1, 0)
    assert view.settings["ipfilter"].value == {"deny": []}


def test_several_workers_need_a_state_file(tmp_path: Path) -> None:
    path = tmp_path / "affinity.toml"
    path.write_text("[referral]\nworkers = 2\n")
    with pytest.raises(ConfigError, match="referral.state_file"):
        affinity_make_registry(load(path, env={}))
