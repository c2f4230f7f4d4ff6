"""Atomic checkpoints of the aggregator's run state: tensors in safetensors, the rest in JSON.

After each committed round the aggregator writes ``round-NNNNNN.safetensors`` (params,
public state, server state) and then ``state.json`` naming that file and its SHA-256; each
by temp file, fsync, rename, fsync of the directory. ``state.json`` is the commit point: a
crash before its rename leaves the previous round's checkpoint intact, so a restart loses at
most the round in flight. Loading verifies the digest; nothing is unpickled.

The two files are bound both ways: ``state.json`` holds the tensors' SHA-256, and the tensors'
safetensors metadata holds the round and the SHA-256 of ``state.json``'s round, meta and
history (:func:`state_digest`). Pointing ``state.json`` at an older (intact) tensors file,
or editing its round or history, is refused at load.

The round ledger is appended *after* the checkpoint, so a crash between the two leaves a
committed round without its ledger entry. :func:`reconcile_ledger` repairs that at start
(it appends the missing ``round_committed`` entries marked ``"recovered": true``) and refuses
a checkpoint that is *behind* the ledger (rolled back, or replaced by an older copy).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedalign.fedcmp.strategy import Tensors
from fedalign.host.atomic import atomic_write
from fedalign.protocol.errors import CheckpointError
from fedalign.protocol.files import private_mkdir
from fedalign.compliance.entries import LedgerEntry
from fedalign.compliance.ledger import Ledger

__all__ = ["RunState", "CheckpointStore", "CHECKPOINT_VERSION", "ROUND_COMMITTED_FIELDS", "state_digest",
           "reconcile_ledger"]

CHECKPOINT_VERSION = 2  # 2: tensors bound to state.json (metadata round + state_digest)
_READABLE_VERSIONS = (1, 2)  # 1 only while its tensors carry no binding (made before version 2)
ROUND_COMMITTED_FIELDS = ("round", "survivors", "dropped", "epsilon", "payload_bytes", "wire_up_bytes")  # what the round ledger records (audit shows the bytes)
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


def _plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples become lists): what state.json holds."""
    return json.loads(json.dumps(obj))


def state_digest(round_: int, meta: Any, history: Any) -> str:
    """SHA-256 of the canonical JSON of a checkpoint's round, meta and history."""
    doc = {"round": round_, "meta": _plain(meta), "history": _plain(history)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
        private_mkdir(self.dir)
        tensors = {}
        for group, ts in zip(_GROUPS, (state.params, state.public, state.server_state)):
            for k, v in ts.items():
                tensors[f"{group}/{k}"] = v.detach().to("cpu").contiguous()
        name = f"round-{state.round:06d}.safetensors"
        try:
            digest = state_digest(state.round, state.meta, state.history)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{self.state_path}: run state is not plain JSON: {e}") from e
        binding = {"round": str(state.round), "state_digest": digest}
        _atomic_write(self.dir / name, lambda p: save_file(tensors, str(p), metadata=binding))
        doc = {
            "version": CHECKPOINT_VERSION,
            "round": state.round,
            "tensors": name,
            "sha256": _sha256(self.dir / name),
            "state_digest": digest,
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
        if not isinstance(doc, dict):
            raise CheckpointError(f"{self.state_path}: expected a JSON object")
        if doc.get("version") not in _READABLE_VERSIONS:
            raise CheckpointError(f"{self.state_path}: version {doc.get('version')!r}, expected {CHECKPOINT_VERSION}")
        for k in ("round", "tensors", "sha256"):
            if k not in doc:
                raise CheckpointError(f"{self.state_path}: lacks {k!r}")
        rnd = doc["round"]
        if type(rnd) is not int or rnd < 0:
            raise CheckpointError(f"{self.state_path}: round must be an int >= 0, got {rnd!r}")
        if not isinstance(doc.get("history", []), list) or not isinstance(doc.get("meta", {}), dict):
            raise CheckpointError(f"{self.state_path}: history must be a list and meta an object")
        tpath = self.dir / Path(str(doc["tensors"])).name
        if not tpath.exists() or _sha256(tpath) != doc["sha256"]:
            raise CheckpointError(f"{tpath}: missing or does not match the SHA-256 in {self.state_path.name}")
        try:
            with safe_open(str(tpath), framework="pt") as f:
                binding = dict(f.metadata() or {})
            flat = load_file(str(tpath))
        except Exception as e:  # safetensors raises its own types on a damaged file
            raise CheckpointError(f"{tpath}: cannot read tensors: {e}") from e
        self._check_binding(doc, tpath, binding)
        groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in _GROUPS}
        for k, v in flat.items():
            g, _, name = k.partition("/")
            if g not in groups:
                raise CheckpointError(f"{tpath}: unexpected tensor {k!r}")
            groups[g][name] = v
        return RunState(
            round=rnd,
            params=groups["params"],
            public=groups["public"],
            server_state=groups["server"],
            meta=dict(doc.get("meta") or {}),
            history=list(doc.get("history") or []),
        )

    def _check_binding(self, doc: dict[str, Any], tpath: Path, binding: dict[str, str]) -> None:
        """Refuse a state.json whose round, meta or history are not those the tensors were saved with."""
        rnd = doc["round"]
        bound = "round" in binding or "state_digest" in binding
        if doc["version"] == 1 and not bound:
            return  # made before checkpoints were bound; nothing to compare
        expected_name = f"round-{rnd:06d}.safetensors"
        if tpath.name != expected_name:
            raise CheckpointError(f"{self.state_path}: round {rnd} must use {expected_name}, not {tpath.name} "
                                  "(state.json points at another round's tensors)")
        if binding.get("round") != str(rnd):
            raise CheckpointError(f"{tpath}: saved for round {binding.get('round')!r}, but {self.state_path.name} "
                                  f"says round {rnd} (rolled back or mixed checkpoints)")
        try:
            digest = state_digest(rnd, doc.get("meta") or {}, doc.get("history") or [])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{self.state_path}: meta/history are not plain JSON: {e}") from e
        if binding.get("state_digest") != digest or doc.get("state_digest", digest) != digest:
            raise CheckpointError(f"{self.state_path}: round, meta or history differ from what was saved with "
                                  f"{tpath.name} (edited state.json or mixed checkpoints)")


def reconcile_ledger(ledger: Ledger, state: RunState | None, *, now: float) -> list[LedgerEntry]:
    """Make the round ledger agree with the checkpoint; call once at start, before round 1 runs.

    The checkpoint is the commit point and the ledger entry follows it, so a crash between
    them leaves rounds in ``state.history`` that the ledger lacks: each is appended now as a
    ``round_committed`` entry with the same fields and ``"recovered": true`` (returned, in
    round order). A round the ledger records as committed but the checkpoint does not know,
    or one recorded with other fields, means the checkpoint was rolled back or replaced:
    CheckpointError, nothing is appended.
    """
    committed: dict[int, dict[str, Any]] = {}
    for rec in (state.history if state is not None else []):
        if not isinstance(rec, dict) or type(rec.get("round")) is not int:
            raise CheckpointError(f"checkpoint history holds a record without an int round: {str(rec)[:120]}")
        committed[rec["round"]] = _plain({k: rec.get(k) for k in ROUND_COMMITTED_FIELDS})
    logged: dict[int, dict[str, Any]] = {}
    for e in ledger.entries():
        if e.kind == "round_committed":
            r = e.fields.get("round")
            logged[r] = {k: e.fields.get(k) for k in ROUND_COMMITTED_FIELDS}
    at = state.round if state is not None else 0
    ahead = sorted((r for r in logged if r not in committed), key=str)
    if ahead:
        raise CheckpointError(f"{ledger.path}: records round(s) {ahead} as committed, but the checkpoint "
                              f"(at round {at}) does not: it was rolled back or replaced; refusing to resume")
    for r, fields in logged.items():
        if fields != committed[r]:
            raise CheckpointError(f"{ledger.path}: round {r} is recorded as {fields}, the checkpoint says "
                                  f"{committed[r]}: they describe different runs; refusing to resume")
    return [ledger.append("round_committed", {**committed[r], "recovered": True}, now=now)
            for r in sorted(committed) if r not in logged]
