"""The ledger: append-only lines, a hash chain an auditor can verify, torn tails never committed."""

import json

import pytest

from fedalign.protocol.errors import CheckpointError
from fedalign.compliance.entries import read_ledger
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.verifier import verify


def test_append_read_verify(tmp_path):
    p = tmp_path / "l.jsonl"
    led = Ledger(p)
    led.append("privacy_charge", {"epsilon_spent": 0.5}, now=1.0)
    led.append("round", {"round": 0}, now=2.0)
    Ledger(p).append("round", {"round": 1}, now=3.0)  # a new writer continues the chain
    entries = read_ledger(p)
    assert [(e.seq, e.kind, e.time) for e in entries] == [(0, "privacy_charge", 1.0), (1, "round", 2.0), (2, "round", 3.0)]
    assert entries[0].fields["epsilon_spent"] == 0.5
    assert verify(p) == 3
    assert (p.stat().st_mode & 0o777) == 0o600


def test_edit_is_detected(tmp_path):
    p = tmp_path / "l.jsonl"
    led = Ledger(p)
    for i in range(3):
        led.append("privacy_charge", {"epsilon_spent": 0.1 * (i + 1)}, now=float(i))
    lines = p.read_text().splitlines()
    obj = json.loads(lines[1])
    obj["epsilon_spent"] = 0.0  # someone lowers a recorded charge
    lines[1] = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointError, match=":3: ledger chain broken"):
        verify(p)


def test_torn_tail_is_ignored_then_dropped(tmp_path):
    p = tmp_path / "l.jsonl"
    Ledger(p).append("round", {"round": 0}, now=0.0)
    with open(p, "ab") as f:
        f.write(b'{"seq":1,"kind":"rou')  # a crash mid-write
    assert len(read_ledger(p)) == 1
    Ledger(p).append("round", {"round": 1}, now=1.0)
    assert [e.seq for e in read_ledger(p)] == [0, 1] and verify(p) == 2


def test_garbage_line_names_file_and_line(tmp_path):
    p = tmp_path / "l.jsonl"
    Ledger(p).append("round", {}, now=0.0)
    with open(p, "a") as f:
        f.write("not json\n")
    with pytest.raises(CheckpointError, match=r"l\.jsonl:2"):
        read_ledger(p)


def test_reserved_and_non_json_fields_rejected(tmp_path):
    led = Ledger(tmp_path / "l.jsonl")
    with pytest.raises(ValueError):
        led.append("round", {"seq": 3}, now=0.0)
    with pytest.raises(ValueError):
        led.append("round", {"x": float("nan")}, now=0.0)
    assert not (tmp_path / "l.jsonl").exists() or read_ledger(tmp_path / "l.jsonl") == []
