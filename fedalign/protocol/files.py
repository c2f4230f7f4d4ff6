"""Owner-only folders and files, whatever the process umask is.

``Path.mkdir`` and ``open`` ask for 0777/0666 and let the umask take bits away: under
``umask 000`` state folders came out 0777 and roster entries 0666 (issue #26). Here the mode is
set explicitly after creation (``os.chmod`` on each folder we create, ``os.fchmod`` on each file
we create), so the umask can only matter for a moment and never for the result.
Folders that already exist are left as they are: the operator may have chosen them (``.``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "PUBLIC_FILE_MODE", "private_mkdir", "open_new_fd"]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def private_mkdir(path: str | os.PathLike, mode: int = PRIVATE_DIR_MODE) -> Path:
    """``mkdir -p path``; every folder this call creates gets ``mode`` (default 0700) exactly."""
    p = Path(path)
    missing = []
    q = p
    while not q.exists():
        missing.append(q)
        if q.parent == q:
            break
        q = q.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:  # made by someone else meanwhile: theirs, not ours to chmod
            if not d.is_dir():
                raise
            continue
        os.chmod(d, mode)
    if not p.is_dir():
        raise NotADirectoryError(f"{p}: exists and is not a folder")
    return p


def open_new_fd(path: str | os.PathLike, flags: int, mode: int = PRIVATE_FILE_MODE) -> int:
    """``os.open(path, flags | O_CREAT, mode)``; a file this call creates gets ``mode`` exactly
    (fchmod), an existing one keeps its mode. Returns the descriptor."""
    existed = os.path.exists(path)
    fd = os.open(path, flags | os.O_CREAT, mode)
    if not existed:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
    return fd
