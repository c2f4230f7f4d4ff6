"""The walk of ε through a silo run: the DP plan is derived once per run and passed on, the budget is
checked once per round, the site policy's per-pass clause bounds that one plan, and the printed plan
warns, naming the knobs, when its noise drowns anything a step can learn."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from test_cli import _toml

from fedalign.host.cli_errors import EXIT_CODES
from fedalign.protocol.errors import ConfigError
from fedalign.silo.cli import app
from fedalign.silo.privacy import NOISE_TO_CLIP_WARN, plan_dp

runner = CliRunner()


def test_the_plan_warns_and_names_the_knobs_when_the_noise_drowns_the_signal():
    # issue 27's real-image silo: Poisson batch 16 of a 55-record shard, the whole 1.07 M-weight projector
    drowned = plan_dp(8.0, 1e-5, shard_sizes=[55], batch_size=16, steps_for=lambda n: math.ceil(n / 16),
                      max_grad_norm=1.0, n_params=1_070_000)
    assert drowned.noise_to_clip > NOISE_TO_CLIP_WARN
    warning = drowned.warning()
    assert warning is not None and f"{drowned.noise_to_clip:.3g}" in warning
    for knob in ("train.batch_size", "train.physical_batch_size", "data.max_passes", "privacy.epsilon"):
        assert knob in warning, knob
    assert "privacy.noise_multiplier" not in warning  # σ was derived: not a knob here
    assert drowned.describe().splitlines()[1] == warning  # the printed plan carries it
    override = plan_dp(50.0, 1e-5, shard_sizes=[55], batch_size=16, steps_for=lambda n: 4, max_grad_norm=1.0,
                       noise_multiplier=2.0, n_params=1_070_000)
    assert "privacy.noise_multiplier" in override.warning()
    # a plan that can learn (results/notes/dp_notes.md: 0.5-1 of the clip) prints one line, no warning
    fine = plan_dp(8.0, 1e-5, shard_sizes=[4096], batch_size=1024, steps_for=lambda n: 8, max_grad_norm=1.0,
                   n_params=29_000)
    assert fine.noise_to_clip < 1 and fine.warning() is None and len(fine.describe().splitlines()) == 1


def test_a_run_derives_its_plan_once_and_checks_the_budget_once_a_round(tmp_path, tiny_dir, data_files, monkeypatch):
    from fedalign.silo.privacy import plan as plan_module
    from fedalign.silo.privacy.accountant import PrivacyAccountant

    calls = {"plan": 0, "admit": 0}
    real_plan, real_admit = plan_module.plan_dp, PrivacyAccountant.admit

    def counted_plan(*a, **k):
        calls["plan"] += 1
        return real_plan(*a, **k)

    def counted_admit(self, charge):
        calls["admit"] += 1
        return real_admit(self, charge)

    monkeypatch.setattr(plan_module, "plan_dp", counted_plan)
    monkeypatch.setattr(PrivacyAccountant, "admit", counted_admit)
    cfg = _toml(tmp_path, tiny_dir, data_files, privacy__enabled=True, privacy__epsilon=50.0)
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["rounds_completed"] == 2
    assert calls == {"plan": 1, "admit": 2}
    entries = [json.loads(l) for l in (tmp_path / "out" / "state" / "ledger.jsonl").read_text().splitlines()]
    (plan,) = [e for e in entries if e["kind"] == "dp_plan"]
    charges = [e for e in entries if e["kind"] == "privacy_charge"]
    assert [c["noise_multiplier"] for c in charges] == [plan["noise_multiplier"]] * 2  # the one plan, passed on
    assert charges[-1]["epsilon_spent"] == pytest.approx(m["epsilon_spent"])


def test_the_policy_bounds_one_pass_of_the_run_s_plan_before_any_model_loads(tmp_path, tiny_dir, data_files,
                                                                             monkeypatch):
    from fedalign.silo import session as session_module

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(session_module, "load_model", no_model)
    (tmp_path / "policy.toml").write_text('[privacy]\ndp_required = true\nmax_epsilon_per_pass = 0.5\n')
    cfg = _toml(tmp_path, tiny_dir, data_files, privacy__enabled=True, privacy__epsilon=8.0)
    cfg.write_text(f'policy = "{tmp_path / "policy.toml"}"\n' + cfg.read_text())
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == EXIT_CODES[ConfigError], r.output  # a PolicyViolation
    assert "privacy.max_epsilon_per_pass: one pass as configured costs" in r.output and "0.5" in r.output
    state = tmp_path / "out" / "state"
    assert not (state / "ledger.jsonl").exists() and not (state / "privacy.json").exists()
    assert not (state / "cursor.json").exists()
