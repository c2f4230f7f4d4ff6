"""A JSON-lines event log: one object per line with time, event name and fields, flushed at once.

Both runtimes write one (``aggregator.jsonl``, ``<silo>.jsonl``) so an operator or a test can
follow a run by tailing a file; events also go to Python logging at INFO.

Events carry text that peers chose (a leave reason, a sender name, an error about their
message), so every value is bounded before it is written: strings to :data:`MAX_STR_CHARS`
(the cut is marked with the number of characters dropped), containers to
:data:`MAX_ITEMS` entries and :data:`MAX_DEPTH` levels, and a record still over
:data:`MAX_RECORD_CHARS` is bounded again more tightly (and marked ``"truncated": true``).
The file is owner-only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from fedalign.protocol.files import open_new_fd, private_mkdir

__all__ = ["EventLog", "read_events", "bounded", "MAX_STR_CHARS", "MAX_ITEMS", "MAX_DEPTH", "MAX_RECORD_CHARS"]

log = logging.getLogger("fedalign.events")

MAX_STR_CHARS = 1000
MAX_ITEMS = 256
MAX_DEPTH = 6
MAX_RECORD_CHARS = 256 * 1024
_TIGHT = (200, 16)  # (chars, items) for a record that is still over MAX_RECORD_CHARS


def _cut(s: str, limit: int = MAX_STR_CHARS) -> str:
    return s if len(s) <= limit else f"{s[:limit]}...[{len(s) - limit} more chars]"


def bounded(v: Any, depth: int = 0, *, chars: int = MAX_STR_CHARS, items: int = MAX_ITEMS) -> Any:
    """``v`` as plain JSON values with every string, container and level bounded (see module doc)."""
    if isinstance(v, bool) or v is None or isinstance(v, float):
        return v
    if isinstance(v, int):
        return v if -(1 << 63) <= v < (1 << 64) else _cut(str(v), 64)
    if isinstance(v, str):
        return _cut(v, chars)
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return b.hex() if len(b) <= 32 else f"{b[:32].hex()}...[{len(b)} bytes]"
    if depth >= MAX_DEPTH:
        return f"<{type(v).__name__} nested deeper than {MAX_DEPTH}>"
    if isinstance(v, dict):
        out = {}
        for i, (k, x) in enumerate(v.items()):
            if i == items:
                out["..."] = f"{len(v) - items} more entries"
                break
            out[_cut(str(k), 100)] = bounded(x, depth + 1, chars=chars, items=items)
        return out
    if isinstance(v, (list, tuple, set, frozenset)):
        seq = v if isinstance(v, (list, tuple)) else list(v)
        out_l = [bounded(x, depth + 1, chars=chars, items=items) for x in seq[:items]]
        if len(seq) > items:
            out_l.append(f"...{len(seq) - items} more items")
        return out_l
    if hasattr(v, "item") and getattr(v, "size", 1) == 1:
        try:
            return bounded(v.item(), depth, chars=chars, items=items)
        except Exception:  # noqa: BLE001 - whatever it is, the log gets its bounded text
            pass
    try:
        text = str(v)
    except Exception:  # noqa: BLE001
        text = f"<{type(v).__name__}>"
    return _cut(text, chars)


_plain = bounded  # the name the module used before values were bounded


class EventLog:
    """Appends events to ``path`` (or only to logging when ``path`` is None); thread-safe."""

    def __init__(self, path: Path | str | None, *, source: str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.source = source
        self.clock = clock
        self._lock = threading.Lock()
        self._f = None
        if self.path is not None:
            private_mkdir(self.path.parent)
            fd = open_new_fd(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
            self._f = os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        head = {"time": round(self.clock(), 3), "source": _cut(str(self.source), 200), "event": _cut(str(event), 200)}
        rec = {**head, **bounded(fields)}
        line = json.dumps(rec, sort_keys=False)
        if len(line) > MAX_RECORD_CHARS:  # many bounded values can still add up: tighten once
            rec = {**head, **bounded(fields, chars=_TIGHT[0], items=_TIGHT[1]), "truncated": True}
            line = json.dumps(rec, sort_keys=False)
        with self._lock:
            if self._f is not None:
                self._f.write(line + "\n")
                self._f.flush()
        log.info("%s %s", self.source, line)
        return rec

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


def read_events(path: Path | str) -> list[dict[str, Any]]:
    """Every complete event in a log file (a torn last line is skipped)."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
