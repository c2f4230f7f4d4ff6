"""A JSON-lines event log: one object per line with time, event name and fields, flushed at once.

Both runtimes write one (``aggregator.jsonl``, ``<silo>.jsonl``) so an operator or a test can
follow a run by tailing a file; events also go to Python logging at INFO.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["EventLog", "read_events"]

log = logging.getLogger("fedalign.events")


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_plain(x) for x in v]
    if hasattr(v, "item"):
        return v.item()
    return str(v)


class EventLog:
    """Appends events to ``path`` (or only to logging when ``path`` is None); thread-safe."""

    def __init__(self, path: Path | str | None, *, source: str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.source = source
        self.clock = clock
        self._lock = threading.Lock()
        self._f = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = {"time": round(self.clock(), 3), "source": self.source, "event": event, **_plain(fields)}
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
