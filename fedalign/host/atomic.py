"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a restart after a crash) sees either the old file or the new one, never half.
Both sides use it: silo exports, accountant state and federation state (including the raw,
unmasked last update); aggregator checkpoints. Files are created owner-only (0600) unless the
caller passes another ``mode``: what these files hold (updates, privacy state, run state) is
for the node itself, and a world-readable default is how secrets leak.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from fedalign.protocol.files import private_mkdir

__all__ = ["PRIVATE_MODE", "private_mkdir", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir"]

PRIVATE_MODE = 0o600


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], mode: int = PRIVATE_MODE) -> Path:
    """Replace ``path`` by what ``write(tmp_path)`` writes, atomically; the temp file never lingers.

    The temp file is created 0600 (``mkstemp``) and keeps that mode while ``write`` fills it;
    ``mode`` is applied just before the rename.
    """
    p = Path(path)
    private_mkdir(p.parent)  # folders it creates: 0700 whatever the umask
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = PRIVATE_MODE) -> Path:
    return atomic_write(path, lambda t: t.write_bytes(data), mode)


def atomic_write_text(path: str | os.PathLike, text: str, mode: int = PRIVATE_MODE) -> Path:
    return atomic_write(path, lambda t: t.write_text(text, encoding="utf-8"), mode)


def atomic_write_json(path: str | os.PathLike, obj: Any, mode: int = PRIVATE_MODE) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n", mode)
