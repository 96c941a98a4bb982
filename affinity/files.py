"""Atomic writes of private files: key rings, the admin token, the state file, a client's saved
assignment.

One way to do it, so that every file affinity writes is safe in a directory
others can write to: the data goes to a temporary file with a random name,
created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 (so a planted
symlink or file is never followed or truncated, and no reader ever sees a
partial or world-readable file), is flushed to disk, and is then renamed over
the target, or, when an existing file must not be replaced, hard-linked into
place, which fails if the target appeared meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents, each mode 0700; existing directories are left
    as they are. (``Path.mkdir(parents=True)`` would make the parents with the umask's mode.)"""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # made by another process meanwhile: not ours to change
            continue
        os.chmod(directory, PRIVATE_DIR)  # whatever the umask


def write_private(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600.

    With ``replace=False`` an existing ``path`` is kept and :class:`FileExistsError`
    raised. Other failures raise :class:`OSError`; the temporary file never stays behind.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, PRIVATE_FILE)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), PRIVATE_FILE)  # whatever the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_into_place(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_into_place(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target)  # atomic "create if absent"
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if target.exists():
            raise FileExistsError(str(target)) from None
        os.replace(tmp, target)
