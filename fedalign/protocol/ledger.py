"""The append-only JSON-lines ledger of privacy charges and rounds, shared by silo and aggregator.

Each line is one JSON object: ``{"seq", "time", "kind", ..., "prev"}`` where ``prev`` is the
SHA-256 of the previous line's bytes (``""`` for the first), so an auditor can tell an edited
or reordered ledger from an appended one (:func:`verify`). An append is one ``write`` of one
complete line on an ``O_APPEND`` descriptor followed by ``fsync``; a crash can at worst leave
an incomplete last line with no newline, which was never committed: readers ignore it and the
next append removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from fedalign.protocol.errors import CheckpointError

__all__ = ["LEDGER_VERSION", "LedgerEntry", "Ledger", "read_ledger", "verify"]

LEDGER_VERSION = 1
_RESERVED = frozenset({"v", "seq", "time", "kind", "prev"})


@dataclass(frozen=True)
class LedgerEntry:
    """One committed line: its sequence number, timestamp, kind and the kind's fields."""

    seq: int
    time: float
    kind: str
    fields: Mapping[str, Any]
    digest: str  # SHA-256 of this line's bytes, what the next line's ``prev`` holds


def _split_lines(path: Path) -> tuple[list[bytes], int]:
    """Complete lines (without newline) and the byte length of the committed prefix."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ledger: {exc}") from exc
    end = data.rfind(b"\n") + 1  # a torn last line has no newline and was never committed
    return data[:end].splitlines(), end


def _parse(path: Path, lineno: int, raw: bytes) -> LedgerEntry:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}:{lineno}: ledger line is not JSON ({exc})") from exc
    if not isinstance(obj, dict) or not {"seq", "time", "kind", "prev"} <= obj.keys():
        raise CheckpointError(f"{path}:{lineno}: ledger line lacks seq/time/kind/prev")
    fields = {k: v for k, v in obj.items() if k not in _RESERVED}
    return LedgerEntry(int(obj["seq"]), float(obj["time"]), str(obj["kind"]), fields,
                       hashlib.sha256(raw).hexdigest())


def read_ledger(path: str | os.PathLike) -> list[LedgerEntry]:
    """Every committed entry, in order; a malformed committed line raises CheckpointError."""
    p = Path(path)
    lines, _ = _split_lines(p)
    return [_parse(p, i + 1, raw) for i, raw in enumerate(lines)]


def verify(path: str | os.PathLike) -> int:
    """Check sequence numbers and the hash chain; return the entry count or raise CheckpointError."""
    p = Path(path)
    lines, _ = _split_lines(p)
    prev = ""
    for i, raw in enumerate(lines):
        entry = _parse(p, i + 1, raw)
        obj_prev = json.loads(raw)["prev"]
        if entry.seq != i or obj_prev != prev:
            raise CheckpointError(f"{p}:{i + 1}: ledger chain broken (edited, reordered or truncated)")
        prev = entry.digest
    return len(lines)


class Ledger:
    """Appends entries to one ledger file; safe against crashes, not against concurrent writers."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._seq: int | None = None
        self._prev = ""

    def _load_tail(self) -> None:
        lines, committed = _split_lines(self.path)
        if self.path.exists() and self.path.stat().st_size > committed:
            with open(self.path, "r+b") as f:  # drop a torn, never-committed last line
                f.truncate(committed)
                f.flush()
                os.fsync(f.fileno())
        self._seq = len(lines)
        self._prev = _parse(self.path, len(lines), lines[-1]).digest if lines else ""

    def append(self, kind: str, fields: Mapping[str, Any], *, now: float) -> LedgerEntry:
        """Commit one entry (durably, before returning). ``now`` is the caller's clock."""
        bad = _RESERVED & fields.keys()
        if bad:
            raise ValueError(f"ledger fields may not use reserved names {sorted(bad)}")
        if self._seq is None:
            self._load_tail()
        assert self._seq is not None
        obj = {"v": LEDGER_VERSION, "seq": self._seq, "time": float(now), "kind": kind, **fields,
               "prev": self._prev}
        try:
            raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ledger entry {kind!r} is not plain JSON: {exc}") from exc
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(raw + b"\n")
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot append to ledger: {exc}") from exc
        entry = LedgerEntry(self._seq, float(now), kind, dict(fields), hashlib.sha256(raw).hexdigest())
        self._seq += 1
        self._prev = entry.digest
        return entry

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(read_ledger(self.path))
