"""The site policy at run time and on the command line: a silo refuses an aggregator's mid-run
request outside its policy and records the refusal in its ledger; `silo train` refuses a config
breaking several clauses, naming each, before loading anything; `audit verify` exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from test_active_aggregator import EvilAggregator

from fedalign.host.cli_errors import EXIT_CODES
from fedalign.compliance.audit import read_entries, verify_ledger
from fedalign.protocol.config.policy import SitePolicy
from fedalign.protocol.errors import CheckpointError, ConfigError
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.policy import PolicyRefused
from fedalign.silo.audit import SiloAuditTrail, attach_policy

runner = CliRunner()


def test_mid_run_requests_outside_the_policy_are_refused_and_in_the_ledger(tmp_path):
    names = ["a", "b", "c", "d"]
    policy = SitePolicy.model_validate({"secure_sum": {"schemes": ["secagg"], "min_silos": 4},
                                        "privacy": {"dp_required": False}, "run": {"max_rounds": 2}})
    ledger = Ledger(tmp_path / "a-ledger.jsonl")
    trail = SiloAuditTrail(ledger, clock=lambda: 5.0)
    ev = EvilAggregator(names)
    try:
        ev.start_silo("a", configure=lambda p: attach_policy(p, policy, trail))
        for s in names[1:]:
            ev.start_silo(s)
        ev.round_start(0, names)
        # three silos, where a's policy says four; then a scheme a's policy does not allow
        assert ev.run_sum(0, 0, ["a", "b", "c"]) is None
        assert ev.run_sum(0, 0, names, scheme="ckks") is None
        assert ("a", 0, 0) not in ev.contributions
        refused = [e for e in read_entries(ledger.path) if e["kind"] == "refusal"]
        assert [r["request"] for r in refused] == ["SumStart", "SumStart"]
        assert "policy secure_sum.min_silos is 4" in refused[0]["reason"] and refused[0]["participants"] == ["a", "b", "c"]
        assert "does not allow scheme ckks" in refused[1]["reason"] and refused[1]["scheme"] == "ckks"
        assert ev.silos["a"].cur.joined == {}
        assert not [e for e in read_entries(ledger.path) if e["kind"] == "release"]  # nothing left a
        # a sum the policy allows goes through (b and c already used their input: a fresh round)
        ev.round_start(1, names)
        assert ev.run_sum(1, 0, names, threshold=4) is not None
        (rel,) = [e for e in read_entries(ledger.path) if e["kind"] == "release"]
        assert rel["payload_kind"] == ["MaskedInput"] and rel["bytes"] > 0 and rel["shapes"] and rel["round"] == 1
        # a round past run.max_rounds: refused, recorded, the silo leaves
        from fedalign.protocol.messages import RoundStart
        from fedalign.aggregator.rounds import round_seed, to_numpy

        ev._send("a", RoundStart(2, to_numpy(ev.params), to_numpy(ev.strategy.init_public(ev.params)),
                                 tuple(names), round_seed(0, 2), "fedavg", {}, 1, 30.0, tuple(names)), 2)
        ev.threads["a"].join(10)
        assert isinstance(ev.errors.get("a"), PolicyRefused)
        last = read_entries(ledger.path)[-1]
        assert last["kind"] == "refusal" and last["request"] == "RoundStart" and "run.max_rounds is 2" in last["reason"]
        assert verify_ledger(ledger.path).ok
    finally:
        ev.close()


def test_max_rounds_counts_trainings_so_a_retried_round_id_counts_again(tmp_path):
    # issue 26: on 3c16410 run.max_rounds compared round ids, so an aggregator that retried round 0
    # (abandoned after its sum) made a silo with max_rounds = 2 train and release 8 times. Each local
    # training counts now, persisted in the silo's state, and the third is refused before it starts.
    names = ["a", "b", "c"]
    policy = SitePolicy.model_validate({"privacy": {"dp_required": False}, "run": {"max_rounds": 2}})
    ledger = Ledger(tmp_path / "a-ledger.jsonl")
    ev = EvilAggregator(names, tmp=tmp_path)
    try:
        ev.start_silo("a", configure=lambda p: attach_policy(p, policy, SiloAuditTrail(ledger, clock=lambda: 5.0)))
        for s in names[1:]:
            ev.start_silo(s)
        for attempt in range(2):  # round 0, retried from a new θ (an aggregator restart): trained afresh
            ev.params = {k: v + 0.01 * attempt for k, v in ev.params.items()}
            ev.round_start(0, names)
            assert ev.run_sum(0, 0, names) is not None, attempt
        assert ev.silos["a"].store.trained() == [0, 0]
        from fedalign.aggregator.rounds import round_seed, to_numpy
        from fedalign.protocol.messages import RoundStart

        params = {k: v + 0.02 for k, v in ev.params.items()}  # a third training of round 0: refused, recorded, a leaves
        ev._send("a", RoundStart(0, to_numpy(params), to_numpy(ev.strategy.init_public(params)), tuple(names),
                                 round_seed(0, 0), "fedavg", {}, 1, 30.0, ()), 0)
        ev.threads["a"].join(10)
        assert isinstance(ev.errors.get("a"), PolicyRefused)
        last = read_entries(ledger.path)[-1]
        assert last["kind"] == "refusal" and "already trained 2 round(s)" in last["reason"]
        assert len([e for e in read_entries(ledger.path) if e["kind"] == "release"]) == 2
    finally:
        ev.close()


def test_train_refuses_a_config_breaking_several_clauses_before_loading_anything(tmp_path, monkeypatch):
    from fedalign.silo import cli, session

    def no_data(*a, **k):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(session, "load_inputs", no_data)
    (tmp_path / "policy.toml").write_text(
        '[privacy]\ndp_required = true\nmax_epsilon = 4.0\nmax_delta = 1e-6\n[run]\nmax_rounds = 5\nmax_passes = 1\n')
    (tmp_path / "silo.toml").write_text(
        '[privacy]\nenabled = false\nepsilon = 9.0\n[train]\nrounds = 8\n[data]\nmax_passes = 2\n'
        f'[output]\ndir = "{tmp_path / "out"}"\n')
    r = runner.invoke(cli.app, ["train", "--local", "--config", str(tmp_path / "silo.toml"),
                                "--policy", str(tmp_path / "policy.toml")])
    assert r.exit_code == EXIT_CODES[ConfigError], r.output
    (line,) = [x for x in r.output.splitlines() if x.startswith("error:")]
    for clause in ("privacy.dp_required", "privacy.max_epsilon", "privacy.max_delta", "run.max_passes",
                   "run.max_rounds"):
        assert clause in line
    assert "5 clause(s)" in line
    assert not (tmp_path / "out").exists()  # nothing written, no ledger started


def test_audit_verify_exit_codes(tmp_path):
    from fedalign.aggregator.cli import build_app
    from fedalign.silo.cli import app

    p = tmp_path / "ledger.jsonl"
    led = Ledger(p)
    for i in range(3):
        led.append("round_committed", {"round": i, "survivors": ["a", "b", "c"]}, now=float(i))
    for a in (app, build_app()):
        r = runner.invoke(a, ["audit", "verify", str(p)])
        assert r.exit_code == 0 and "OK, 3 entries" in r.output, r.output
    head = r.output.split("head ")[1].split(";")[0]
    data = p.read_bytes()
    p.write_bytes(data.replace(b'"round":1', b'"round":7'))
    r = runner.invoke(app, ["audit", "verify", str(p)])
    assert r.exit_code == EXIT_CODES[CheckpointError] and "BROKEN at entry 1" in r.output
    p.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1])  # newest entry deleted
    assert runner.invoke(app, ["audit", "verify", str(p)]).exit_code == 0  # the chain alone cannot tell
    r = runner.invoke(app, ["audit", "verify", str(p), "--head", head])
    assert r.exit_code == EXIT_CODES[CheckpointError] and "BROKEN at entry 2" in r.output and "deleted" in r.output


def test_a_local_run_starts_its_ledger_with_the_policy_and_the_report_agrees(tmp_path, tiny_dir, data_files):
    from test_cli import _toml

    from fedalign.protocol.config.policy import load_site_policy
    from fedalign.compliance.policy import policy_digest
    from fedalign.silo.cli import app

    pol = tmp_path / "policy.toml"
    pol.write_text('[privacy]\ndp_required = true\nmax_epsilon = 60.0\n[release]\nexport = false\n')
    cfg = _toml(tmp_path, tiny_dir, data_files, privacy__enabled=True, privacy__epsilon=50.0)
    r = runner.invoke(app, ["train", "--local", "--config", str(cfg), "--policy", str(pol)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert not (out / "mm_projector.safetensors").exists()  # release.export = false
    entries = read_entries(out / "state" / "ledger.jsonl")
    assert entries[0]["kind"] == "run_start" and entries[0]["policy_sha256"] == policy_digest(load_site_policy(pol))
    from importlib.metadata import version  # the software its ε came from (Opacus' accountant), for an auditor
    assert entries[0]["software"]["opacus"] == version("opacus") and entries[0]["software"]["torch"] == version("torch")
    assert [e["kind"] for e in entries] == ["run_start", "dp_plan", "privacy_charge", "round", "privacy_charge", "round",
                                            "run_end"]
    r = runner.invoke(app, ["audit", "report", "--config", str(cfg), "--json", str(tmp_path / "r.json"),
                            "--html", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["dp"]["independent"]["agrees"] and rep["dp"]["epsilon"] == pytest.approx(
        [e for e in entries if e["kind"] == "privacy_charge"][-1]["epsilon_spent"])
    assert {x["clause"]: x["status"] for x in rep["against_policy"]}["release.export"] == "ok"
    assert "<svg" in (tmp_path / "r.html").read_text()
