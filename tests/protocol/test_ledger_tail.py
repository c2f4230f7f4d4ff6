"""The ledger's tail is protected: signed entries, witnessed heads, and torn-line repair that
never removes a committed entry (issue #10)."""

from __future__ import annotations

import json
import logging

import pytest

from fedalign.protocol.errors import CheckpointError
from fedalign.compliance.entries import LedgerError, LedgerHead, read_ledger
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.verifier import verify
from fedalign.compliance.witness import witnessed_heads
from fedalign.crypto.identity import generate_identity


def _ledger(path, n=4, identity=None):
    led = Ledger(path, identity=identity)
    for i in range(n):
        led.append("privacy_charge", {"round": i, "epsilon_spent": 0.1 * (i + 1)}, now=float(i))
    return led


def _edit_line(path, index, fn):
    lines = path.read_bytes().split(b"\n")
    obj = json.loads(lines[index])
    fn(obj)
    lines[index] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines))


# ---- signatures: the newest entry cannot be edited unseen --------------------------------


def test_signed_ledger_verifies_with_the_owner_key(tmp_path):
    ident = generate_identity()
    p = tmp_path / "l.jsonl"
    _ledger(p, identity=ident)
    assert verify(p, public_key=ident.public_bytes) == 4
    assert all(e.signed for e in read_ledger(p))


def test_editing_the_last_entry_fails_signature_check_naming_it(tmp_path):
    ident = generate_identity()
    p = tmp_path / "l.jsonl"
    _ledger(p, identity=ident)
    _edit_line(p, 3, lambda o: o.update(epsilon_spent=0.0))  # lower the newest charge
    with pytest.raises(LedgerError, match=r"l\.jsonl:4: entry 3: .*signature") as ei:
        verify(p, public_key=ident.public_bytes)
    assert (ei.value.index, ei.value.line) == (3, 4)


def test_another_key_or_missing_signatures_fail(tmp_path):
    ident, other = generate_identity(), generate_identity()
    p = tmp_path / "l.jsonl"
    _ledger(p, identity=ident)
    with pytest.raises(LedgerError, match="entry 0"):
        verify(p, public_key=other.public_bytes)
    q = tmp_path / "unsigned.jsonl"
    _ledger(q)
    with pytest.raises(LedgerError, match="entry 0: entry is not signed"):
        verify(q, public_key=ident.public_bytes)


def test_edited_last_entry_of_an_unsigned_ledger_is_caught_by_a_witnessed_head(tmp_path):
    p = tmp_path / "l.jsonl"
    led = _ledger(p)
    head = led.head()
    assert head.index == 3 and head.signature == b""
    _edit_line(p, 3, lambda o: o.update(epsilon_spent=0.0))
    assert verify(p) == 4  # the chain alone cannot see it
    with pytest.raises(LedgerError, match=r"l\.jsonl:4: entry 3: differs from the witnessed head") as ei:
        verify(p, witnessed_heads=[head])
    assert ei.value.index == 3


# ---- witnessed heads: truncation and prefixes --------------------------------------------


@pytest.mark.parametrize("keep", [3, 1, 0])
def test_truncation_below_a_witnessed_head_is_detected(tmp_path, keep):
    ident = generate_identity()
    p = tmp_path / "l.jsonl"
    head = _ledger(p, identity=ident).head()
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:keep]))  # drop the newest entries (or all of them)
    assert verify(p, public_key=ident.public_bytes) == keep  # a prefix is a valid chain...
    with pytest.raises(LedgerError, match=f"ledger ends at entry {keep - 1} but entry 3 was witnessed") as ei:
        verify(p, public_key=ident.public_bytes, witnessed_heads=[head])  # ...but not the witnessed one
    assert ei.value.index == keep


def test_a_forged_head_is_refused(tmp_path):
    ident, mallory = generate_identity(), generate_identity()
    p = tmp_path / "l.jsonl"
    led = _ledger(p, identity=ident)
    forged = Ledger(tmp_path / "m.jsonl", identity=mallory)
    forged.append("x", {}, now=0.0)
    with pytest.raises(LedgerError, match="not signed by the ledger's owner"):
        verify(p, public_key=ident.public_bytes, witnessed_heads=[forged.head()])
    verify(p, public_key=ident.public_bytes, witnessed_heads=[led.head()])


def test_peers_record_heads_in_their_own_ledger(tmp_path):
    agg_id, silo_id = generate_identity(), generate_identity()
    agg = _ledger(tmp_path / "agg.jsonl", n=2, identity=agg_id)
    silo = Ledger(tmp_path / "silo.jsonl", identity=silo_id)
    silo.record_witness("aggregator", agg.head(), now=5.0)  # e.g. the head a RoundStart carried
    agg.append("round_committed", {"round": 2}, now=6.0)
    silo.record_witness("aggregator", agg.head(), now=7.0)
    heads = witnessed_heads(tmp_path / "silo.jsonl", "aggregator")
    assert [h.index for h in heads] == [1, 2]
    assert verify(tmp_path / "agg.jsonl", public_key=agg_id.public_bytes, witnessed_heads=heads) == 3
    lines = (tmp_path / "agg.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "agg.jsonl").write_bytes(b"".join(lines[:2]))  # the aggregator drops its last round
    with pytest.raises(LedgerError, match="entry 2 was witnessed"):
        verify(tmp_path / "agg.jsonl", public_key=agg_id.public_bytes, witnessed_heads=heads)


def test_head_round_trips_and_bad_heads_name_the_problem():
    h = LedgerHead(4, "ab" * 32, b"\x01" * 64)
    assert LedgerHead.from_wire(h.to_wire()) == h
    assert LedgerHead.from_wire(LedgerHead(-1, "").to_wire()) == LedgerHead(-1, "")
    for bad, needle in [({"index": "4", "digest": "ab" * 32, "signature": ""}, "index"),
                        ({"index": 4, "digest": "zz", "signature": ""}, "digest"),
                        ({"index": 4, "digest": "ab" * 32, "signature": "00"}, "signature"),
                        ([4], "map")]:
        with pytest.raises(CheckpointError, match=needle):
            LedgerHead.from_wire(bad)


# ---- verification names the first bad entry -----------------------------------------------


def test_reordered_entries_name_the_first_bad_line(tmp_path):
    p = tmp_path / "l.jsonl"
    _ledger(p, n=5)
    lines = p.read_bytes().splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    p.write_bytes(b"".join(lines))
    with pytest.raises(LedgerError, match=r"l\.jsonl:3: ledger chain broken at entry 2: sequence number 3") as ei:
        verify(p)
    assert (ei.value.index, ei.value.line) == (2, 3)


def test_a_deleted_middle_entry_is_named(tmp_path):
    p = tmp_path / "l.jsonl"
    _ledger(p, n=5)
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:2] + lines[3:]))
    with pytest.raises(LedgerError, match="entry 2") as ei:
        verify(p)
    assert ei.value.line == 3


def test_non_canonical_rewrite_is_detected(tmp_path):
    p = tmp_path / "l.jsonl"
    _ledger(p, n=2)
    lines = p.read_bytes().splitlines(keepends=True)
    lines[1] = json.dumps(json.loads(lines[1]), indent=None).encode() + b"\n"  # same content, other bytes
    p.write_bytes(b"".join(lines))
    with pytest.raises(LedgerError, match="entry 1: line is not in canonical form"):
        verify(p)


# ---- torn tails: repair never removes a committed entry ----------------------------------


def test_a_last_entry_that_lost_its_newline_is_kept(tmp_path, caplog):
    p = tmp_path / "l.jsonl"
    _ledger(p, n=3)
    p.write_bytes(p.read_bytes()[:-1])  # the final newline is lost (torn after the entry's bytes)
    assert [e.seq for e in read_ledger(p)] == [0, 1, 2]  # the entry is committed: readers keep it
    led = Ledger(p)
    with caplog.at_level(logging.WARNING, logger="fedalign.ledger"):
        led.append("round", {"round": 3}, now=9.0)
    assert [e.seq for e in read_ledger(p)] == [0, 1, 2, 3]
    assert verify(p) == 4
    assert led.repairs[0].restored_newline and led.repairs[0].dropped_bytes == 0
    assert "restored it, nothing removed" in caplog.text


def test_a_torn_partial_line_is_cut_saved_and_reported(tmp_path, caplog):
    p = tmp_path / "l.jsonl"
    _ledger(p, n=2)
    committed = p.read_bytes()
    with open(p, "ab") as f:
        f.write(b'{"seq":2,"kind":"rou')  # a crash mid-write
    led = Ledger(p)
    with caplog.at_level(logging.WARNING, logger="fedalign.ledger"):
        led.append("round", {"round": 2}, now=3.0)
    assert p.read_bytes().startswith(committed)  # not one committed byte touched
    assert [e.seq for e in read_ledger(p)] == [0, 1, 2] and verify(p) == 3
    rep = led.repairs[0]
    assert (rep.offset, rep.dropped_bytes, rep.restored_newline) == (len(committed), 20, False)
    assert rep.saved_to.read_bytes() == b'{"seq":2,"kind":"rou'
    assert (rep.saved_to.stat().st_mode & 0o777) == 0o600
    assert "removed a torn, never-committed last line of 20 bytes" in caplog.text


def test_existing_api_still_works_for_callers(tmp_path):
    # silo DP charges and aggregator round commits call Ledger(path).append(kind, fields, now=)
    p = tmp_path / "l.jsonl"
    e = Ledger(p).append("round_committed", {"round": 0, "survivors": ["a", "b"]}, now=1.0)
    assert e.seq == 0 and not e.signed and [x.kind for x in Ledger(p)] == ["round_committed"]
    with pytest.raises(ValueError, match="reserved"):
        Ledger(p).append("x", {"sig": "00"}, now=0.0)
