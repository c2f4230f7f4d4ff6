"""Issue 26, item 2: the aggregator has an Ed25519 identity (``aggregator keygen``), the roster's
``[aggregator]`` entry names it, ``aggregator serve`` refuses a config that disagrees with the roster,
and ``aggregator audit verify --config`` checks every entry against it. On 3c16410 the aggregator had
no identity: its ledger could be edited with no key at all."""

from __future__ import annotations

import stat

import pytest
from typer.testing import CliRunner

from fedalign.aggregator.audit import keygen_aggregator, load_identity_checked
from fedalign.aggregator.cli import build_app
from fedalign.crypto.identity import generate_identity, load_identity
from fedalign.protocol.config.aggregator import load_aggregator_config
from fedalign.protocol.config.roster import load_roster
from fedalign.protocol.errors import ConfigError
from fedalign.protocol.keys import load_keypair
from fedalign.compliance.ledger import Ledger


def _setup(tmp_path, *, identity_line: str = 'identity_key = "keys/aggregator.identity"'):
    pub, sec, ident, entry = keygen_aggregator(tmp_path / "keys", "aggregator")
    (tmp_path / "roster.toml").write_text(entry)
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text(f'[server]\nsecret_key = "keys/aggregator.key_secret"\n{identity_line}\nroster = "roster.toml"\n'
                   '[init]\nd_vision = 4\nd_model = 4\n[output]\ndir = "out"\n')
    return cfg, ident


def test_keygen_writes_a_0600_identity_and_the_roster_entry_names_it(tmp_path):
    cfg, ident = _setup(tmp_path)
    assert stat.S_IMODE(ident.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys" / "aggregator.roster.toml").stat().st_mode) == 0o644  # public keys only
    roster = load_roster(tmp_path / "roster.toml")
    assert roster.aggregator is not None and roster.aggregator.identity_public_key == load_identity(ident).public_hex
    c = load_aggregator_config(cfg)
    assert load_identity_checked(c, roster, load_keypair(tmp_path / "keys/aggregator.key_secret")) is not None
    with pytest.raises(ConfigError, match="exists"):
        keygen_aggregator(tmp_path / "keys", "aggregator")


def test_serve_refuses_an_identity_the_roster_does_not_name(tmp_path):
    cfg, ident = _setup(tmp_path, identity_line="")
    roster = load_roster(tmp_path / "roster.toml")
    with pytest.raises(ConfigError, match="server.identity_key is unset"):
        load_identity_checked(load_aggregator_config(cfg), roster, None)
    ident.unlink()
    from fedalign.crypto.identity import save_identity

    save_identity(generate_identity(), ident)  # another identity than the roster's
    cfg.write_text(cfg.read_text().replace("[server]\n", '[server]\nidentity_key = "keys/aggregator.identity"\n'))
    with pytest.raises(ConfigError, match="is not the \\[aggregator\\] identity_public_key"):
        load_identity_checked(load_aggregator_config(cfg), roster, None)


def test_a_forged_resigned_aggregator_ledger_is_refused_by_verify_show_and_report(tmp_path, monkeypatch):
    cfg, ident = _setup(tmp_path)
    led = tmp_path / "out" / "ledger.jsonl"
    real = Ledger(led, identity=load_identity(ident))
    for r in range(3):
        real.append("round_committed", {"round": r, "survivors": ["a", "b", "c"]}, now=float(r))
    monkeypatch.chdir(tmp_path)
    app = build_app()
    ok = CliRunner().invoke(app, ["audit", "verify", "--config", "aggregator.toml"])
    assert ok.exit_code == 0 and "signatures checked" in ok.output and "[aggregator]" in ok.output, ok.output
    led.unlink()
    forged = Ledger(led, identity=generate_identity())  # the same story, re-signed with an attacker's key
    for r in range(2):
        forged.append("round_committed", {"round": r, "survivors": ["a", "b", "c"]}, now=float(r))
    for cmd in ("verify", "show", "report"):
        r = CliRunner().invoke(app, ["audit", cmd, "--config", "aggregator.toml"])
        assert r.exit_code == 11 and "BROKEN at entry 0" in r.output, (cmd, r.output)
