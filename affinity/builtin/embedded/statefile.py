"""The embedded registry's state file: atomic writes, a lock between processes, corruption kept.

Several referral worker processes share one state file. Writers take an
exclusive ``flock`` on a sibling lock file, read the current state, change it
and replace the file atomically (write to a temporary file, fsync, rename).
Readers notice changes by the file's identity (inode, size, mtime). A file
that cannot be parsed is never silently dropped: it is moved aside to
``<name>.corrupt-<time>`` and reported, and the registry starts from its
config.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from affinity.errors import RegistryUnavailable
from affinity.files import make_private_dir, write_private

log = logging.getLogger("affinity.plugin.registry")

FORMAT_VERSION = 1
State = dict[str, Any]


def empty_state() -> State:
    """A state with nothing in it."""
    return {
        "format": FORMAT_VERSION,
        "index": 1,
        "servers": {},
        "removed": [],
        "draining": [],
        "settings": {},
    }


class StateFile:
    """One JSON document on disk, shared by the processes of one referral."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    def identity(self) -> tuple[int, int, int] | None:
        """Changes whenever the file is replaced; None when it does not exist."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self) -> State:
        """The current state; a corrupt file is moved aside and an empty state returned."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return empty_state()
        try:
            state = orjson.loads(data)
            _validate(state)
        except (orjson.JSONDecodeError, ValueError) as exc:
            self._move_aside(str(exc))
            return empty_state()
        return state  # type: ignore[no-any-return]

    def update(self, change: Callable[[State], None]) -> State:
        """Apply ``change`` to the state under the lock and write it back atomically.

        A file system error (a full disk, a symlink planted as the lock) is a
        :class:`RegistryUnavailable`, answered ``503`` by the admin API.
        """
        try:
            make_private_dir(self.path.parent)
            with self._locked():
                state = self.read()
                change(state)
                state["index"] = int(state.get("index", 0)) + 1
                self._write(state)
                return state
        except OSError as exc:
            msg = f"cannot write the state file {str(self.path)!r}: {exc.strerror or exc}"
            raise RegistryUnavailable(msg) from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._lock_path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, state: State) -> None:
        write_private(
            self.path, orjson.dumps(state, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )

    def _move_aside(self, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        log.error(
            "state file %s is corrupt (%s); moved it to %s and started from the config",
            self.path,
            reason,
            aside,
        )


def _validate(state: Any) -> None:
    """The shape affinity writes; anything else is not ours, and the file is moved aside.

    Whether each server entry may be used (its id, URL and so on) is the
    registry's check, entry by entry.
    """
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        msg = f"not an affinity state document of format {FORMAT_VERSION}"
        raise ValueError(msg)
    shapes = {"index": int, "servers": dict, "removed": list, "draining": list, "settings": dict}
    for key, kind in shapes.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            msg = f"{key!r} should be a {kind.__name__}"
            raise ValueError(msg)
    for sid, entry in state["servers"].items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("url"), str)
            and isinstance(entry.get("service"), str)
            and isinstance(entry.get("weight", 1), int)
            and isinstance(entry.get("meta", {}), dict)
        ):
            msg = f"server {sid!r} is not an object with url, service, weight and meta"
            raise ValueError(msg)
    for key in ("removed", "draining"):
        if not all(isinstance(sid, str) for sid in state[key]):
            raise ValueError(f"{key!r} should list server ids")
    for name, doc in state["settings"].items():
        version = doc.get("version") if isinstance(doc, dict) else None
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or version < 1
            or not isinstance(doc.get("value"), dict)
        ):
            raise ValueError(f"settings {name!r} is not an object with a version and a value")
