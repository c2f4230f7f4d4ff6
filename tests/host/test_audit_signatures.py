"""`audit verify --public-key`: every entry of a signed ledger must carry its owner's signature,
so an edit of the newest entry (which no later entry's hash covers) is caught without a head."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedalign.crypto.identity import generate_identity
from fedalign.host.audit_cli import make_audit_app
from fedalign.compliance.ledger import Ledger

runner = CliRunner()


def _verify(path, *extra):
    app = make_audit_app("silo", lambda config: config)
    r = runner.invoke(app, ["verify", str(path), *extra])
    return r.exit_code, r.output


def _signed_ledger(path, identity):
    led = Ledger(path, identity=identity)
    for i in range(3):
        led.append("privacy_charge", {"round": i, "epsilon": 1.0 + i}, now=1000.0 + i)
    return path


def test_a_signed_ledger_verifies_with_its_owners_key_only(tmp_path):
    me, other = generate_identity(), generate_identity()
    path = _signed_ledger(tmp_path / "ledger.jsonl", me)
    assert _verify(path, "--public-key", me.public_hex)[0] == 0
    code, out = _verify(path, "--public-key", other.public_hex)
    assert code == 11 and "entry 0" in out


def test_an_edited_newest_entry_fails_with_the_key_and_passes_without(tmp_path):
    me = generate_identity()
    path = _signed_ledger(tmp_path / "ledger.jsonl", me)
    lines = path.read_text().splitlines()
    last = json.loads(lines[-1])
    last["epsilon"] = 0.1  # a silo understating what it spent
    lines[-1] = json.dumps(last, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    assert _verify(path)[0] == 0  # the hash chain alone cannot see it: nothing comes after
    code, out = _verify(path, "--public-key", me.public_hex)
    assert code == 11 and "entry 2" in out and "signature" in out


def test_an_unsigned_ledger_fails_when_a_key_is_given_and_a_bad_key_is_one_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    Ledger(path).append("run_start", {"policy": "x"}, now=1.0)
    code, out = _verify(path, "--public-key", generate_identity().public_hex)
    assert code == 11 and "not signed" in out
    code, out = _verify(path, "--public-key", "zz")
    assert code == 2 and out.strip().count("\n") == 0
