"""Atomic private writes (affinity.files) and the files written with them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from affinity.builtin.embedded.statefile import StateFile
from affinity.files import make_private_dir, write_private


def test_a_private_file_is_written_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "f", b"secret")
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_bytes() == b"secret"
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["f"]  # no temporary file left behind


def test_replace_false_keeps_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "f", b"new", replace=False)
    assert (tmp_path / "f").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_a_planted_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "state.json").symlink_to(victim)
    write_private(tmp_path / "state.json", b"{}")
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / "state.json").is_symlink()
    assert (tmp_path / "state.json").read_bytes() == b"{}"


def test_temporary_names_are_not_predictable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        opened.append(os.fspath(path))
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    write_private(tmp_path / "f", b"1")
    write_private(tmp_path / "f", b"2")
    assert len(set(opened)) == 2
    assert all(str(os.getpid()) not in Path(name).name for name in opened)


def test_private_directories_are_0700(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


def test_the_state_file_directory_is_created_0700(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "run" / "state.json")
    state.update(lambda s: None)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "run" / "state.json").stat().st_mode & 0o777 == 0o600
