"""One verifier for every entry point (issue 26, items 1-2, silo side).

The library (``compliance.verifier.verify`` / ``verify_ledger``), ``compliance.audit.verify_ledger`` and
``silo audit verify|show|report`` give one verdict on one ledger: a forged ledger re-signed with
an attacker's key is refused wherever the owner's key is known (``--public-key`` or ``--config``),
a signed ledger checked without a key says its signatures were NOT checked, and a crash-torn last
line is a torn tail everywhere (refused unless ``--allow-torn-tail``).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from fedalign.crypto.identity import generate_identity
from fedalign.host.cli_errors import EXIT_CODES
from fedalign.compliance import audit
from fedalign.protocol.config.roster import roster_entry_toml
from fedalign.protocol.errors import CheckpointError
from fedalign.protocol.keys import generate as curve_keypair
from fedalign.compliance.entries import LedgerError, LedgerHead, read_ledger
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.verifier import verify, verify_ledger
from fedalign.compliance.witness import witnessed_heads
from fedalign.silo.privacy import PrivacyAccountant, RoundCharge

BROKEN_EXIT = EXIT_CODES[CheckpointError]  # 11, docs/silo.md "Errors and exit codes"
runner = CliRunner()


def _app():
    from fedalign.silo.audit import app

    return app


def _cli(*args):
    r = runner.invoke(_app(), list(map(str, args)))
    return r.exit_code, r.output


def _silo_ledger(path, identity, sigma=0.8):
    """A silo's DP ledger as a local run writes it: run_start, a charge and a round per shard, run_end."""
    led = Ledger(path, identity=identity)
    led.append("run_start", {"role": "silo", "silo": "hospital-a", "mode": "local", "policy": None,
                             "policy_sha256": None, "settings": {"dp": {"enabled": True, "epsilon": 8.0,
                                                                        "delta": 1e-5}},
                             "transport": {"mode": "local (no network)"}}, now=1.0)
    acc = PrivacyAccountant(8.0, 1e-5, ledger=led)
    for shard in range(3):
        acc.charge(RoundCharge(sigma, 0.125, 8, 0, shard, 256), now=2.0 + shard)
        led.append("round", {"round": shard, "epsilon": acc.spent}, now=2.5 + shard)
    led.append("run_end", {"reason": "done", "rounds": 3}, now=9.0)
    return path


def _silo_config(tmp_path, identity, *, roster=True):
    """silo.toml whose ledger is out/state/ledger.jsonl; the roster lists hospital-a with ``identity``.
    The identity_key file does not exist here: an auditor holds the roster, not the private key."""
    (tmp_path / "roster.toml").write_text(roster_entry_toml("hospital-a", curve_keypair().public, identity.public_hex))
    fed = ['silo_id = "hospital-a"', 'identity_key = "keys/hospital-a.identity"']
    if roster:
        fed.append('roster = "roster.toml"')
    cfg = tmp_path / "silo.toml"
    cfg.write_text('[output]\ndir = "out"\n[federation]\n' + "\n".join(fed) + "\n")
    (tmp_path / "out" / "state").mkdir(parents=True, exist_ok=True)
    return cfg, tmp_path / "out" / "state" / "ledger.jsonl"


# ---- a forged ledger, re-signed with the attacker's own key ---------------------------------------


@pytest.mark.parametrize("key_via", ["--public-key", "--config"])
def test_a_forged_resigned_ledger_is_refused_by_verify_show_and_report(tmp_path, key_via):
    silo, mallory = generate_identity(), generate_identity()
    cfg, ledger = _silo_config(tmp_path, silo)
    _silo_ledger(tmp_path / "genuine.jsonl", silo, sigma=0.8)
    _silo_ledger(ledger, mallory, sigma=3.0)  # rewritten with far less ε spent, chained and signed anew
    forged_eps = [e for e in read_ledger(ledger) if e.kind == "privacy_charge"][-1].fields["epsilon_spent"]
    assert forged_eps < 2.0  # what the forgery claims (the silo spent more)
    key = ["--public-key", silo.public_hex] if key_via == "--public-key" else []
    src = ["--ledger", ledger] if key_via == "--public-key" else []
    where = [ledger] if key_via == "--public-key" else []
    html = tmp_path / "r.html"
    for args in (["verify", *where, *key], ["show", *src, *key], ["report", *src, *key, "--html", html]):
        if key_via == "--config":
            args.insert(1, "--config") or args.insert(2, cfg)
        code, out = _cli(*args)
        assert code == BROKEN_EXIT, (args, out)
        assert "BROKEN at entry 0" in out and "signature" in out, (args, out)
        assert "agrees" not in out and f"{forged_eps:.4f}" not in out  # nothing of the forgery is reported
    assert not html.exists()
    # the genuine ledger passes the same commands with the same key, and says the signatures were checked
    ledger.write_bytes((tmp_path / "genuine.jsonl").read_bytes())
    for args in (["verify", *where, *key], ["show", *src, *key]):
        if key_via == "--config":
            args.insert(1, "--config") or args.insert(2, cfg)
        code, out = _cli(*args)
        assert code == 0, (args, out)
        assert f"every entry signed by ed25519:{silo.public_hex}" in out


def test_without_the_key_a_forged_ledger_is_never_called_checked(tmp_path):
    silo, mallory = generate_identity(), generate_identity()
    forged = _silo_ledger(tmp_path / "ledger.jsonl", mallory, sigma=3.0)
    code, out = _cli("report", "--ledger", forged, "--json", tmp_path / "r.json")
    assert code == 0, out  # the chain is intact; nothing says whose signatures these are...
    top = out.split("\n\n")[0]  # ...and the top of the output says so before anything else
    assert top.startswith("ledger verification: INTACT")
    assert "signatures" in top and "NOT RUN" in top and "NOT checked" in top
    assert json.loads((tmp_path / "r.json").read_text())["verification"]["signatures_checked"] is False
    code, out = _cli("verify", forged, "--public-key", silo.public_hex)
    assert code == BROKEN_EXIT and "entry 0" in out


# ---- a signed ledger verified without a key -----------------------------------------------------


def test_a_signed_ledger_without_a_key_says_signatures_were_not_checked(tmp_path):
    silo = generate_identity()
    p = _silo_ledger(tmp_path / "ledger.jsonl", silo)
    code, out = _cli("verify", p)
    assert code == 0, out
    assert "signatures present on every entry but NOT checked: pass --public-key or --config" in out
    assert "no signatures" not in out
    code, out = _cli("show", "--ledger", p)
    assert code == 0 and "no signatures" not in out
    top = out.split("\n\n")[0]
    assert "NOT RUN" in top and "present on every entry but NOT checked" in top
    code, out = _cli("report", "--ledger", p, "--html", tmp_path / "r.html")
    assert code == 0, out
    page = (tmp_path / "r.html").read_text()
    checks = page[: page.index("Settings against the site policy")]  # before any table of the report
    assert "Which checks ran" in checks and "NOT RUN" in checks and "NOT checked" in checks
    # an unsigned ledger says that instead, never that signatures were present
    q = tmp_path / "unsigned.jsonl"
    Ledger(q).append("run_start", {"role": "silo"}, now=1.0)
    code, out = _cli("verify", q)
    assert code == 0 and "signatures none: the entries are unsigned" in out


def test_a_config_without_an_identity_says_why_no_key_was_used(tmp_path):
    silo = generate_identity()
    cfg, ledger = _silo_config(tmp_path, silo)
    cfg.write_text('[output]\ndir = "out"\n')  # no identity_key: this silo does not sign
    _silo_ledger(ledger, silo)  # ...yet its ledger is signed
    code, out = _cli("verify", "--config", cfg)
    assert code == 0, out
    assert "NOT checked" in out and "names no federation.identity_key" in out and "pass --public-key" in out


# ---- a torn tail ----------------------------------------------------------------------------------


def test_a_torn_tail_gets_the_same_verdict_from_every_entry_point(tmp_path):
    silo = generate_identity()
    p = tmp_path / "ledger.jsonl"
    led = Ledger(p, identity=silo)
    for i in range(3):
        led.append("round", {"round": i}, now=float(i))
    with open(p, "ab") as f:
        f.write(b'{"kind":"round","prev":"ab')  # a crash mid-append
    # library, both modules: a torn tail, neither intact nor broken, and not ok unless allowed
    for res in (verify_ledger(p), audit.verify_ledger(p)):
        assert (res.status, res.ok, res.entries, res.first_bad) == ("torn_tail", False, 3, 3)
    with pytest.raises(LedgerError, match="TORN TAIL") as ei:
        verify(p)
    assert ei.value.index == 3
    assert verify(p, allow_torn_tail=True) == 3
    assert verify_ledger(p, allow_torn_tail=True).ok
    # every CLI entry point: refused (exit 11) saying TORN TAIL, accepted with --allow-torn-tail
    for args in (["verify", p], ["show", "--ledger", p], ["report", "--ledger", p]):
        code, out = _cli(*args)
        assert code == BROKEN_EXIT and "TORN TAIL" in out and "OK" not in out and "BROKEN" not in out, (args, out)
        code, out = _cli(*args, "--allow-torn-tail", "--public-key", silo.public_hex)
        assert code == 0 and "TORN TAIL (accepted with --allow-torn-tail" in out, (args, out)
    # the writer's repair on the next append leaves an intact ledger
    Ledger(p, identity=silo).append("round", {"round": 3}, now=3.0)
    assert verify(p, public_key=silo.public_bytes) == 4 and _cli("verify", p)[0] == 0


# ---- the library and the CLI agree -----------------------------------------------------------------


def _corruptions(good: bytes):
    lines = good.splitlines(keepends=True)
    edited = json.loads(lines[1])
    edited["epsilon"] = 0.0
    edited_line = json.dumps(edited, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    yield "intact", good, None
    yield "deleted middle entry", b"".join(lines[:2] + lines[3:]), 2
    yield "edited field", b"".join(lines[:1] + [edited_line] + lines[2:]), 1
    yield "reordered lines", b"".join(lines[:2] + [lines[3], lines[2]] + lines[4:]), 2
    yield "torn tail", good + lines[2][:17], 5
    yield "last newline lost (complete entry)", good[:-1], None
    yield "garbage line", b"".join(lines[:3] + [b"not json\n"] + lines[3:]), 3


def test_library_and_cli_agree_on_corrupted_ledgers(tmp_path):
    p = tmp_path / "ledger.jsonl"
    led = Ledger(p)
    for i in range(5):
        led.append("round", {"round": i, "epsilon": 0.5 * (i + 1)}, now=float(i))
    disagreements = []
    for name, data, expect_bad in _corruptions(p.read_bytes()):
        p.write_bytes(data)
        try:
            lib: int | None = verify(p)
            lib_bad = None
        except LedgerError as e:
            lib, lib_bad = None, e.index
        res = audit.verify_ledger(p)
        code, out = _cli("verify", p)
        verdicts = {"library verify": lib_bad, "audit.verify_ledger": res.first_bad if not res.ok else None,
                    "silo audit verify": None if code == 0 else int(out.split(" at entry ")[1].split()[0])
                    if " at entry " in out else "?", "expected": expect_bad}
        if len(set(verdicts.values())) != 1 or (code == 0) != (lib is not None) or res.line() not in out:
            disagreements.append((name, verdicts, code, out.strip()))
        if expect_bad is not None:
            assert code == BROKEN_EXIT, (name, out)
    assert not disagreements, "\n".join(map(str, disagreements))


# ---- witnessed heads keep their signatures ---------------------------------------------------------


def test_edited_witness_heads_do_not_vouch_for_a_cut_ledger(tmp_path):
    # the aggregator's ledger is unsigned: anyone can rewrite the heads it recorded; the silo's
    # signature on each head is what makes them evidence, and the verifier checks it
    silo = generate_identity()
    sp, ap = tmp_path / "silo.jsonl", tmp_path / "agg.jsonl"
    sled, aled = Ledger(sp, identity=silo), Ledger(ap)
    for i in range(4):
        sled.append("privacy_charge", {"round": i, "epsilon_spent": 1.0 + i}, now=float(i))
        aled.record_witness("hospital-a", sled.head(), now=float(i))
    args = ["verify", sp, "--public-key", silo.public_hex, "--witness-ledger", ap, "--node", "hospital-a"]
    assert _cli(*args)[0] == 0
    lines = sp.read_bytes().splitlines(keepends=True)
    sp.write_bytes(b"".join(lines[:2]))  # the last two DP charges cut
    code, out = _cli(*args)
    assert code == BROKEN_EXIT and "deleted" in out
    # rewrite the aggregator's ledger so its heads match the cut ledger (no key needed: it is unsigned)
    cut = Ledger(sp).head()
    ap.unlink()
    forged = Ledger(ap)
    for i in range(2):
        forged.record_witness("hospital-a", LedgerHead(i, hashlib.sha256(lines[i].rstrip(b"\n")).hexdigest()),
                              now=float(i))
    assert witnessed_heads(ap, "hospital-a")[-1].digest == cut.digest
    code, out = _cli(*args)
    assert code == BROKEN_EXIT and "not signed by the ledger's owner" in out, out
    res = verify_ledger(sp, public_key=silo.public_bytes, witnessed_heads=witnessed_heads(ap, "hospital-a"))
    assert res.status == "broken" and res.failed_check == "witnessed heads"
    # without the key the heads match, and the verdict says their signatures were not checked
    code, out = _cli(*args[:2], *args[4:])
    assert code == 0 and "signatures present on every entry but NOT checked" in out


# ---- a number JSON cannot carry is a broken entry, not a crash ----------------------------------------


def test_a_non_finite_timestamp_is_a_broken_entry_not_a_crash(tmp_path):
    silo = generate_identity()
    p = _silo_ledger(tmp_path / "ledger.jsonl", silo)
    lines = p.read_bytes().splitlines(keepends=True)
    obj = json.loads(lines[1])
    lines[1] = json.dumps(obj, sort_keys=True, separators=(",", ":")).replace(
        f'"time":{obj["time"]}', '"time":1e999').encode() + b"\n"
    p.write_bytes(b"".join(lines))
    for key in ([], ["--public-key", silo.public_hex]):
        code, out = _cli("verify", p, *key)
        assert code == BROKEN_EXIT and "BROKEN at entry 1" in out, (key, out)
    with pytest.raises(LedgerError, match="entry 1"):
        verify(p, public_key=silo.public_bytes)
