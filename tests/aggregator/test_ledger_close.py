"""Issue 26, items 2-3: the aggregator signs its ledger and heads, and no entry of a run is left
unwitnessed: at RunEnd each silo's final head is witnessed by the aggregator, which answers with a
signed receipt and its own head after its run_end (compliance/witness.py, "No unwitnessed tail").

On 3c16410 the aggregator had no identity (its ledger and heads unsigned), and the entries a silo
wrote after its last UpdateReady (the last round's release record, run_end) were witnessed by
nobody: deleting them passed verify with the silo's key and the aggregator's ledger.
"""

from __future__ import annotations

from pathlib import Path

from fedalign.lab.toy_federation import run_federation

from fedalign.crypto.identity import generate_identity
from fedalign.compliance.entries import LedgerHead, read_ledger
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.verifier import BROKEN, INTACT, UNWITNESSED, verify_ledger
from fedalign.compliance.witness import final_heads, sign_receipt, witnessed_heads
from fedalign.protocol.messages import LedgerReceipt

NAMES = ["silo-0", "silo-1", "silo-2"]


def _silo_verdict(d: Path, name: str, ids: dict, agg_key: bytes | None, *, peer: bool = True, **kw):
    agg = d / "aggregator.jsonl"
    return verify_ledger(d / f"{name}.jsonl", public_key=bytes.fromhex(ids[name].public_hex), owner=name,
                         peer_key=agg_key, witnessed_heads=witnessed_heads(agg, name) if peer else (),
                         receipted=final_heads(agg, name) if peer else (), **kw)


def _run(tmp_path: Path, **kw):
    ids = {s: generate_identity() for s in NAMES}
    res = run_federation(3, rounds=2, options={"rank": 2}, ledger_dir=tmp_path, identities=ids, **kw)
    return res, ids


def _signed_run(tmp_path: Path, **kw):
    """A run whose aggregator signs with its own identity (the silos trust it): result, the silos'
    identities, the aggregator's identity and its public key."""
    agg_id = generate_identity()
    res, ids = _run(tmp_path, aggregator_identity=agg_id, **kw)
    return res, ids, agg_id, bytes.fromhex(agg_id.public_hex)


def test_a_signed_run_closes_every_ledger_and_each_verifies_against_the_others(tmp_path):
    res, ids, agg_id, agg_key = _signed_run(tmp_path)
    assert res.error is None and res.state.round == 2
    for name in NAMES:
        last = read_ledger(tmp_path / f"{name}.jsonl")[-1]
        assert last.kind == "witnessed_head" and last.fields["receipt"]["for"] == name  # the closing receipt
        assert res.silos[name].ledger_closed.startswith("ledger closed"), res.silos[name].ledger_closed
        v = _silo_verdict(tmp_path, name, ids, agg_key)
        assert v.status == INTACT and v.receipts == 1 and v.receipts_checked, v.line()
        # without the aggregator's ledger the receipt alone still covers the tail
        assert _silo_verdict(tmp_path, name, ids, agg_key, peer=False).status == INTACT
    agg = verify_ledger(tmp_path / "aggregator.jsonl", public_key=agg_key,
                        witnessed_heads=[h for s in NAMES for h in witnessed_heads(tmp_path / f"{s}.jsonl",
                                                                                    "aggregator")])
    entries = read_ledger(tmp_path / "aggregator.jsonl")
    assert agg.status == INTACT and agg.covered == len(entries) - 1, agg.line()  # its run_end witnessed too
    assert entries[-1].kind == "run_end" and entries[-1].fields["closed"] == NAMES
    assert all(e.signed for e in entries)  # every aggregator entry signed by its identity


def test_cutting_a_silos_last_entries_is_refused_with_or_without_the_aggregators_ledger(tmp_path):
    res, ids, agg_id, agg_key = _signed_run(tmp_path)
    assert res.error is None
    path = tmp_path / "silo-1.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    for cut in (1, 2, 3):  # the receipt; receipt + run_end; + the last release record
        path.write_bytes(b"".join(lines[:-cut]))
        with_peer = _silo_verdict(tmp_path, "silo-1", ids, agg_key)
        alone = _silo_verdict(tmp_path, "silo-1", ids, agg_key, peer=False)
        assert not with_peer.ok and not alone.ok, (cut, with_peer.line(), alone.line())
        assert alone.status == UNWITNESSED and alone.unwitnessed is not None
        # an auditor may accept a run that ended before its ledger was closed, knowingly
        assert _silo_verdict(tmp_path, "silo-1", ids, agg_key, peer=False, allow_unwitnessed_tail=True).ok


def test_a_receipt_forged_copied_or_made_out_to_another_silo_is_refused(tmp_path):
    res, ids, agg_id, agg_key = _signed_run(tmp_path)
    assert res.error is None
    # forged: the silo re-closes its ledger with a receipt it signed itself (another key)
    src = tmp_path / "silo-0.jsonl"
    for how in ("forged", "other owner"):
        d = tmp_path / how
        d.mkdir()
        lines = src.read_bytes().splitlines(keepends=True)
        (d / "silo-0.jsonl").write_bytes(b"".join(lines[:-1]))  # the genuine receipt removed
        (d / "aggregator.jsonl").write_bytes((tmp_path / "aggregator.jsonl").read_bytes())
        led = Ledger(d / "silo-0.jsonl", identity=ids["silo-0"])
        own = led.head()
        signer, owner = (generate_identity(), "silo-0") if how == "forged" else (agg_id, "silo-2")
        led.record_receipt("aggregator", owner, own, sign_receipt(signer, owner, own), LedgerHead(-1, ""), now=1.0)
        v = _silo_verdict(d, "silo-0", ids, agg_key, peer=False)
        assert v.status == BROKEN and v.first_bad == own.index + 1, v.line()


def test_a_silo_refuses_aggregator_heads_and_receipts_not_signed_by_the_roster_identity(tmp_path):
    # a malicious aggregator signs with a key of its own, not the roster's [aggregator] identity: the
    # silos record a refusal for each of its heads, witness none, and record that their ledger was
    # not closed (their tail is then reported unwitnessed, not silently accepted)
    impostor, trusted = generate_identity(), generate_identity()
    res, ids = _run(tmp_path, aggregator_identity=impostor, silos_trust=trusted.public_hex)
    assert res.error is None
    for name in NAMES:
        ents = read_ledger(tmp_path / f"{name}.jsonl")
        assert not [e for e in ents if e.kind == "witnessed_head"], name
        assert len([e for e in ents if e.kind == "refusal" and "head" in e.fields["request"]]) == 2
        assert ents[-1].kind == "ledger_not_closed" and "not signed" in ents[-1].fields["reason"]
        assert res.silos[name].ledger_closed.startswith("ledger NOT closed")
        v = _silo_verdict(tmp_path, name, ids, bytes.fromhex(trusted.public_hex), peer=False)
        assert v.status == UNWITNESSED, v.line()


class _NoReceipts:
    """A silo's transport that never sees a LedgerReceipt (lost on the way, or never sent)."""

    def __init__(self, inner, net) -> None:
        self.inner, self.name, self.traffic = inner, inner.name, inner.traffic

    def send(self, env):
        return self.inner.send(env)

    def recv(self, timeout_s):
        env = self.inner.recv(timeout_s)
        return None if env is not None and isinstance(env.message, LedgerReceipt) else env

    def close(self):
        self.inner.close()


def test_a_silo_without_a_receipt_says_so_in_its_ledger_and_outcome(tmp_path):
    res, ids, _, agg_key = _signed_run(tmp_path, receipt_timeout_s=0.5,
                                       wrap_client=lambda name, c, net: _NoReceipts(c, net) if name == "silo-2" else c)
    assert res.error is None
    out = res.silos["silo-2"]
    assert out.ledger_closed.startswith("ledger NOT closed") and "no receipt" in out.ledger_closed
    assert read_ledger(tmp_path / "silo-2.jsonl")[-1].kind == "ledger_not_closed"
    v = _silo_verdict(tmp_path, "silo-2", ids, agg_key)
    assert v.status == UNWITNESSED and "receipt" in v.unwitnessed_reason, v.line()
    assert _silo_verdict(tmp_path, "silo-1", ids, agg_key).status == INTACT  # the others closed
