"""The silo's federation state on disk: the committed round with its carried state, the pending
state of the round in flight, and the last trained update (so a restarted round never trains or
charges ε twice, and never puts one update into two sums).

Each file is written atomically; the committed round travels inside the state file's metadata,
so a crash never pairs a round with another round's state. This module is the only reader and
writer of these files (``silo status`` reads the round through :func:`committed_round`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import save_file

from fedalign.fedcmp.strategy import Tensors
from fedalign.host.atomic import atomic_write
from fedalign.protocol.errors import CheckpointError
from fedalign.protocol.files import private_mkdir
from fedalign.protocol.view import arrays_digest

__all__ = ["TrainedUpdate", "FederationStore", "params_digest", "committed_round"]


@dataclass(frozen=True)
class TrainedUpdate:
    """One round of local training: Δ = θ_k − θ_t, records used, ε spent so far (None without DP)."""

    delta: Tensors
    n_samples: int
    epsilon: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


def params_digest(params: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 of named tensors (the same digest the round's signed view uses for θ_t)."""
    return arrays_digest({k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
                          for k, v in params.items()}).hex()


class FederationStore:
    """The silo's federation state on disk: committed round, carried state, the last update."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        self._sent: dict[str, Any] | None = None  # sums_joined.json, cached (in memory only without a dir)
        self._trained: list[int] = []  # trainings.json without a dir
        if directory is not None:
            private_mkdir(directory)

    def save_state(self, committed: int, state: Tensors) -> None:
        """The committed round travels inside the state file (one atomic write, so a crash
        never pairs a round with another round's state); federation.json mirrors it for people."""
        if self.dir is None:
            return
        atomic_write(self.dir / "silo_state.safetensors", lambda p: save_file(
            {k: v.contiguous() for k, v in state.items()} or {"__empty__": torch.zeros(0)}, str(p),
            metadata={"committed_round": str(committed)}))
        atomic_write(self.dir / "federation.json", lambda p: p.write_text(json.dumps({"committed_round": committed})))

    def _read(self, name: str, round_key: str, what: str) -> tuple[int, Tensors] | None:
        """A state file's round (from its metadata) and tensors; None if absent."""
        path = self.dir / name if self.dir is not None else None
        if path is None or not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                r = int((f.metadata() or {})[round_key])
                t = {k: f.get_tensor(k) for k in f.keys() if k != "__empty__"}
        except Exception as e:  # noqa: BLE001 - any damage is one clear error
            raise CheckpointError(f"{self.dir}: cannot read the silo's {what}: {e}") from e
        return r, t

    def trained(self) -> list[int]:
        """The round of every local training this silo started (a retried round id counts again):
        what policy run.max_rounds bounds. Persisted, so a restart does not reset it."""
        if self.dir is None:
            return list(self._trained)
        path = self.dir / "trainings.json"
        if not path.exists():
            return []
        try:
            rounds = json.loads(path.read_text())["rounds"]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{path}: cannot read this silo's training count: {e}") from e
        return [int(r) for r in rounds]

    def note_training(self, round_id: int) -> None:
        """Record, before it starts, that a local training of ``round_id`` is starting."""
        if self.dir is None:
            self._trained.append(round_id)
            return
        rounds = [*self.trained(), round_id]
        atomic_write(self.dir / "trainings.json", lambda p: p.write_text(json.dumps({"rounds": rounds})))

    def load_state(self) -> tuple[int, Tensors | None]:
        got = self._read("silo_state.safetensors", "committed_round", "federation state")
        return got if got is not None else (-1, None)

    def save_update(self, round_id: int, digest: str, upd: TrainedUpdate) -> None:
        if self.dir is None:
            return
        atomic_write(self.dir / "last_update.safetensors", lambda p: save_file(
            {k: v.contiguous() for k, v in upd.delta.items()}, str(p),
            metadata={"round": str(round_id), "digest": digest, "n_samples": str(upd.n_samples),
                      "epsilon": "" if upd.epsilon is None else repr(upd.epsilon)}))

    def save_pending(self, round_id: int, state: Tensors) -> None:
        """The carried state this round will leave if it is committed (written before inputs leave)."""
        if self.dir is None:
            return
        atomic_write(self.dir / "pending_state.safetensors", lambda p: save_file(
            {k: v.contiguous() for k, v in state.items()} or {"__empty__": torch.zeros(0)}, str(p),
            metadata={"round": str(round_id)}))

    def load_pending(self) -> tuple[int, Tensors] | None:
        return self._read("pending_state.safetensors", "round", "pending state")

    def mark_exposed(self, round_id: int, digest: str) -> None:
        """Record (before the input leaves) that this round's update went into a sum."""
        if self.dir is None:
            return
        atomic_write(self.dir / "last_update.exposed.json",
                     lambda p: p.write_text(json.dumps({"round": round_id, "digest": digest})))

    def _inputs_sent(self) -> dict[str, Any]:
        if self._sent is None:
            p = self.dir / "sums_joined.json" if self.dir is not None else None
            self._sent = {"round": -1, "sent": []}
            if p is not None and p.exists():
                try:
                    self._sent = json.loads(p.read_text())
                except ValueError as e:
                    raise CheckpointError(f"{p}: unreadable record of the sums this silo joined: {e}") from e
        return self._sent

    def record_input_sent(self, round_id: int, phase: int, instance: int, update_digest: str) -> None:
        """Record (persisted before the input leaves) that ``update_digest``'s input for (round, phase)
        went into sum ``instance``; older rounds are forgotten (their updates never come back)."""
        rec = self._inputs_sent()
        if rec["round"] != round_id:
            rec = {"round": round_id, "sent": []}
        row = {"phase": phase, "instance": instance, "update": update_digest}
        if row in rec["sent"]:
            return
        rec = {"round": round_id, "sent": [*rec["sent"], row]}
        if self.dir is not None:
            atomic_write(self.dir / "sums_joined.json", lambda p: p.write_text(json.dumps(rec)))
        self._sent = rec

    def input_sent(self, round_id: int, phase: int, update_digest: str) -> int | None:
        """The sum instance this update's input for (round, phase) already went into, or None."""
        rec = self._inputs_sent()
        if rec["round"] != round_id:
            return None
        for row in rec["sent"]:
            if row["phase"] == phase and row["update"] == update_digest:
                return int(row["instance"])
        return None

    def load_update(self, round_id: int, digest: str) -> TrainedUpdate | None:
        """The saved update of ``round_id`` for θ with ``digest``, unless it already went into a sum."""
        if self.dir is None:
            return None
        p = self.dir / "last_update.safetensors"
        if not p.exists():
            return None
        ex = self.dir / "last_update.exposed.json"
        if ex.exists() and json.loads(ex.read_text()) == {"round": round_id, "digest": digest}:
            return None
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("round") != str(round_id) or meta.get("digest") != digest:
                return None
            delta = {k: f.get_tensor(k) for k in f.keys()}
        eps = meta.get("epsilon") or None
        return TrainedUpdate(delta, int(meta["n_samples"]), float(eps) if eps else None)




def committed_round(directory: Path) -> int:
    """The last committed round recorded in ``directory`` (the federation state folder), or -1."""
    path = directory / "federation.json"
    if not path.exists():
        return -1
    return int(json.loads(path.read_text())["committed_round"])
