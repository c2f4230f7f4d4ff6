"""Checkpoints: state.json and the tensors are bound to each other, files are owner-only, and the
round ledger is reconciled with the checkpoint at start (issue #10)."""

from __future__ import annotations

import json

import pytest
import torch

from fedalign.aggregator.checkpoint import CheckpointStore, RunState, reconcile_ledger
from fedalign.protocol.errors import CheckpointError
from fedalign.compliance.entries import read_ledger
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.verifier import verify


def _record(r):
    return {"round": r, "survivors": ["a", "b", "c"], "dropped": [], "epsilon": {"a": 0.5}, "metrics": {"loss": 1.0}}


def _state(r):
    return RunState(r, {"w": torch.full((2, 2), float(r))}, {"q": torch.ones(2)}, {},
                    meta={"strategy": "fedavg"}, history=[_record(i) for i in range(r)])


@pytest.fixture
def store(tmp_path):
    s = CheckpointStore(tmp_path / "ckpt", keep=3)
    for r in (1, 2, 3):
        s.save(_state(r))
    return s


def test_pointing_state_json_at_an_older_tensors_file_is_refused(store):
    doc = json.loads(store.state_path.read_text())
    old = store.dir / "round-000002.safetensors"
    import hashlib

    doc["tensors"], doc["sha256"] = old.name, hashlib.sha256(old.read_bytes()).hexdigest()
    store.state_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="round 3 must use round-000003.safetensors"):
        store.load()


def test_an_older_tensors_file_renamed_into_place_is_refused(store):
    doc = json.loads(store.state_path.read_text())
    old = store.dir / "round-000002.safetensors"
    cur = store.dir / "round-000003.safetensors"
    cur.write_bytes(old.read_bytes())
    import hashlib

    doc["sha256"] = hashlib.sha256(cur.read_bytes()).hexdigest()
    store.state_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="saved for round '2', but state.json says round 3"):
        store.load()


@pytest.mark.parametrize("edit", [
    lambda d: d["history"].pop(),
    lambda d: d["history"][0].update(survivors=["a"]),
    lambda d: d["meta"].update(strategy="fedcmp"),
])
def test_editing_history_or_meta_is_refused(store, edit):
    doc = json.loads(store.state_path.read_text())
    edit(doc)
    store.state_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="round, meta or history differ"):
        store.load()


def test_checkpoint_files_are_owner_only(store):
    for p in [store.state_path, *store.dir.glob("round-*.safetensors")]:
        assert (p.stat().st_mode & 0o777) == 0o600, p


# ---- reconcile_ledger ----------------------------------------------------------------------


def _commit(ledger, r, **extra):
    rec = _record(r)
    ledger.append("round_committed", {**{k: rec[k] for k in ("round", "survivors", "dropped", "epsilon")}, **extra},
                  now=float(r))


def test_a_crash_between_checkpoint_and_ledger_is_repaired_at_start(tmp_path):
    p = tmp_path / "ledger.jsonl"
    led = Ledger(p)
    _commit(led, 0)
    _commit(led, 1)
    state = _state(3)  # rounds 0..2 checkpointed; the crash came before round 2's ledger entry
    added = reconcile_ledger(Ledger(p), state, now=100.0)
    assert [(e.kind, e.fields["round"], e.fields["recovered"]) for e in added] == [("round_committed", 2, True)]
    entries = read_ledger(p)
    assert [e.fields["round"] for e in entries] == [0, 1, 2] and verify(p) == 3
    assert entries[2].fields["survivors"] == ["a", "b", "c"] and entries[2].time == 100.0
    assert reconcile_ledger(Ledger(p), state, now=101.0) == []  # idempotent
    assert reconcile_ledger(Ledger(tmp_path / "fresh.jsonl"), None, now=0.0) == []  # a first start


def test_a_checkpoint_behind_the_ledger_is_refused(tmp_path):
    p = tmp_path / "ledger.jsonl"
    led = Ledger(p)
    for r in range(3):
        _commit(led, r)
    with pytest.raises(CheckpointError, match=r"records round\(s\) \[2\] as committed, but the checkpoint"):
        reconcile_ledger(Ledger(p), _state(2), now=0.0)
    assert len(read_ledger(p)) == 3


def test_a_ledger_of_another_run_is_refused(tmp_path):
    p = tmp_path / "ledger.jsonl"
    led = Ledger(p)
    led.append("round_committed", {"round": 0, "survivors": ["x"], "dropped": [], "epsilon": {}}, now=0.0)
    with pytest.raises(CheckpointError, match="round 0 is recorded as"):
        reconcile_ledger(Ledger(p), _state(1), now=0.0)
