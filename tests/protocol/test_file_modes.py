"""File modes are explicit, whatever the umask (issue #26 item 7): under ``umask 000`` every
folder we create for state, keys, ledgers, logs and checkpoints is 0700 and every file 0600;
only the public roster entry is 0644."""

from __future__ import annotations

import os

import pytest
import torch

from fedalign.aggregator.checkpoint import CheckpointStore, RunState
from fedalign.host.atomic import atomic_write_json
from fedalign.compliance.eventlog import EventLog
from fedalign.protocol.keys import write_keypair
from fedalign.compliance.ledger import Ledger
from fedalign.silo.keys import add_to_roster, keygen_silo
from fedalign.silo.store import FederationStore


def _mode(p):
    return p.stat().st_mode & 0o777


@pytest.fixture
def umask0():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_modes_are_owner_only_under_umask_000(tmp_path, umask0):
    atomic_write_json(tmp_path / "a" / "b" / "state.json", {"x": 1})
    write_keypair(tmp_path / "keys", "agg", role="aggregator")
    ks = keygen_silo(tmp_path / "silo_keys", "hospital-a")
    add_to_roster(tmp_path / "roster" / "roster.toml", "hospital-a", ks.roster_entry)
    log = EventLog(tmp_path / "logs" / "events.jsonl", source="aggregator")
    log.emit("x")
    log.close()
    Ledger(tmp_path / "ledger" / "ledger.jsonl").append("run_start", {"round": 0}, now=1.0)
    FederationStore(tmp_path / "federation")
    CheckpointStore(tmp_path / "checkpoints").save(RunState(round=1, params={"w": torch.zeros(2)}, public={}, server_state={}))

    dirs = ["a", "a/b", "keys", "silo_keys", "roster", "logs", "ledger", "federation", "checkpoints"]
    files = ["a/b/state.json", "keys/agg.key", "keys/agg.key_secret", "silo_keys/hospital-a.key",
             "silo_keys/hospital-a.key_secret", "silo_keys/hospital-a.identity", "logs/events.jsonl",
             "ledger/ledger.jsonl", "checkpoints/state.json", "checkpoints/round-000001.safetensors"]
    public = ["silo_keys/hospital-a.roster.toml", "roster/roster.toml"]
    got = {n: _mode(tmp_path / n) for n in dirs + files + public}
    want = {**{n: 0o700 for n in dirs}, **{n: 0o600 for n in files}, **{n: 0o644 for n in public}}
    assert {n: oct(m) for n, m in got.items()} == {n: oct(m) for n, m in want.items()}


def test_an_existing_folder_keeps_its_mode(tmp_path, umask0):
    (tmp_path / "mine").mkdir(mode=0o755)
    os.chmod(tmp_path / "mine", 0o755)
    atomic_write_json(tmp_path / "mine" / "s.json", {})
    assert _mode(tmp_path / "mine") == 0o755 and _mode(tmp_path / "mine" / "s.json") == 0o600
