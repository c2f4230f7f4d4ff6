"""Atomic checkpoints of the aggregator's run state: tensors in safetensors, the rest in JSON.

After each committed round the aggregator writes ``round-NNNNNN.safetensors`` (params,
public state, server state) and then ``state.json`` naming that file and its SHA-256; each
by temp file, fsync, rename, fsync of the directory. ``state.json`` is the commit point: a
crash before its rename leaves the previous round's checkpoint intact, so a restart loses at
most the round in flight. Loading verifies the digest; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedalign.host.atomic import atomic_write
from fedalign.protocol.errors import CheckpointError
from fedalign.fedcmp.strategy import Tensors

__all__ = ["RunState", "CheckpointStore", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1
_GROUPS = ("params", "public", "server")


@dataclass
class RunState:
    """What the aggregator carries between rounds. ``round`` = rounds committed so far."""

    round: int
    params: Tensors
    public: Tensors
    server_state: Tensors
    meta: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _atomic_write(path: Path, write) -> None:
    try:
        atomic_write(path, write)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write checkpoint: {e}") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CheckpointStore:
    """Checkpoints in one directory; :meth:`save` commits a round, :meth:`load` returns the last."""

    def __init__(self, directory: Path | str, *, keep: int = 2) -> None:
        self.dir = Path(directory)
        self.keep = keep
        self.state_path = self.dir / "state.json"

    def save(self, state: RunState) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for group, ts in zip(_GROUPS, (state.params, state.public, state.server_state)):
            for k, v in ts.items():
                tensors[f"{group}/{k}"] = v.detach().to("cpu").contiguous()
        name = f"round-{state.round:06d}.safetensors"
        _atomic_write(self.dir / name, lambda p: save_file(tensors, str(p)))
        doc = {
            "version": CHECKPOINT_VERSION,
            "round": state.round,
            "tensors": name,
            "sha256": _sha256(self.dir / name),
            "meta": state.meta,
            "history": state.history,
        }
        _atomic_write(self.state_path, lambda p: p.write_text(json.dumps(doc, indent=1), encoding="utf-8"))
        self._prune(name)
        return self.dir / name

    def _prune(self, current: str) -> None:
        old = sorted(p for p in self.dir.glob("round-*.safetensors") if p.name != current)
        for p in old[: max(0, len(old) - (self.keep - 1))]:
            p.unlink(missing_ok=True)

    def load(self) -> RunState | None:
        """The last committed state, or None when the directory holds none."""
        if not self.state_path.exists():
            return None
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.state_path}: unreadable checkpoint state: {e}") from e
        if not isinstance(doc, dict) or doc.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{self.state_path}: version {doc.get('version')!r}, expected {CHECKPOINT_VERSION}")
        for k in ("round", "tensors", "sha256"):
            if k not in doc:
                raise CheckpointError(f"{self.state_path}: lacks {k!r}")
        tpath = self.dir / Path(str(doc["tensors"])).name
        if not tpath.exists() or _sha256(tpath) != doc["sha256"]:
            raise CheckpointError(f"{tpath}: missing or does not match the SHA-256 in {self.state_path.name}")
        try:
            flat = load_file(str(tpath))
        except Exception as e:  # safetensors raises its own types on a damaged file
            raise CheckpointError(f"{tpath}: cannot read tensors: {e}") from e
        groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in _GROUPS}
        for k, v in flat.items():
            g, _, name = k.partition("/")
            if g not in groups:
                raise CheckpointError(f"{tpath}: unexpected tensor {k!r}")
            groups[g][name] = v
        return RunState(
            round=int(doc["round"]),
            params=groups["params"],
            public=groups["public"],
            server_state=groups["server"],
            meta=dict(doc.get("meta") or {}),
            history=list(doc.get("history") or []),
        )
