"""A new operator's first runs (issue #12): early stops keep and export what finished and exit with
their own code, nothing spends data or ε on a round that cannot finish, model errors say what to
do, and the console says what was skipped and what the LM cannot read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from fedalign.host.cli_errors import EXIT_CODES
from fedalign.protocol.errors import ConfigError, DataError, ModelLoadError, StoppedEarly
from fedalign.silo.cli import app

from test_cli import _toml

runner = CliRunner()


def _lines(r) -> list[str]:
    return [l for l in r.output.splitlines() if l.startswith("error:")]


def test_local_run_short_of_data_says_so_keeps_the_rounds_and_exits_with_its_own_code(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files, train__rounds=3)  # 64 records, shards of 32: 2 rounds fit
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == EXIT_CODES[StoppedEarly] != 0, r.output
    assert "gives 2 shard(s)" in r.output  # said before training, not only at the end
    (line,) = _lines(r)
    assert "stopped after 2 of 3 rounds" in line and "data is spent" in line and "mm_projector" in line
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["stopped_by"] == "data_spent" and m["rounds_completed"] == 2 and "heldout_nll" in m
    assert (tmp_path / "out" / "mm_projector.safetensors").is_file()


def test_local_run_refuses_a_federated_runs_output_dir(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files)
    (tmp_path / "out" / "state" / "federation").mkdir(parents=True)
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == EXIT_CODES[ConfigError], r.output
    (line,) = _lines(r)
    assert "federated run's state" in line and str(tmp_path / "out") in line
    assert not (tmp_path / "out" / "state" / "cursor.json").exists()


def test_a_budget_that_cannot_last_the_planned_run_is_refused_before_anything_is_spent(tmp_path, tiny_dir, data_files):
    # Before: the run trained until the budget ran out mid-run and threw away the finished rounds.
    # Now the silo plans the whole schedule (every pass) before loading data: a noise override
    # whose schedule passes the budget is refused at once, and no data or ε is spent on it.
    from fedalign.protocol.errors import PrivacyBudgetExceeded
    from fedalign.silo.privacy import compute_epsilon

    sigma, q, steps = 1.0, 8 / 32, 2
    one = compute_epsilon([(sigma, q, steps)], 1e-5)
    two = compute_epsilon([(sigma, q, steps)] * 2, 1e-5)
    cfg = _toml(tmp_path, tiny_dir, data_files, train__rounds=4, data__max_passes=2, privacy__enabled=True,
                privacy__noise_multiplier=sigma, privacy__epsilon=(one + two) / 2)
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == EXIT_CODES[PrivacyBudgetExceeded], r.output
    (line,) = _lines(r)
    assert "impossible privacy budget" in line and "noise_multiplier" in line
    out = tmp_path / "out"
    assert not (out / "state" / "cursor.json").exists() or \
        json.loads((out / "state" / "cursor.json").read_text())["shards"] == 0
    assert not (out / "metrics.json").exists()


def test_a_projector_that_does_not_fit_uses_no_data(tmp_path, tiny_dir, data_files):
    from fedalign.protocol.config.silo import load_silo_config
    from fedalign.silo.session import SiloSession

    session = SiloSession(load_silo_config(_toml(tmp_path, tiny_dir, data_files)))
    wrong = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in session.initial_params().items()}
    with pytest.raises(ConfigError, match="nothing was trained"):
        session.train_round(wrong)
    assert not (tmp_path / "out" / "state" / "cursor.json").exists()
    d = session.declaration()
    assert d.shapes == {k: tuple(v.shape) for k, v in session.initial_params().items()}


def test_a_model_path_that_does_not_exist_says_not_found(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files, model__llm="./models/no-such-llm")
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == EXIT_CODES[ModelLoadError], r.output
    (line,) = _lines(r)
    assert "model.llm" in line and "no-such-llm" in line and "not found" in line and "Repo id" not in line


def test_a_hub_id_that_is_not_cached_fails_at_once_offline_by_default(tmp_path, tiny_dir, data_files):
    """The `silo` command itself goes offline (the Makefile's environment is not needed)."""
    cfg = _toml(tmp_path, tiny_dir, data_files, model__llm="fedalign-test-org/not-a-cached-model")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "fedalign.silo.cli", "train", "--local", "-c", str(cfg)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == EXIT_CODES[ModelLoadError], p.stderr
    line = [l for l in p.stderr.splitlines() if l.startswith("error:")][-1]
    assert "not-a-cached-model" in line and "HF_HUB_OFFLINE" in line and "huggingface-cli download" in line


def test_captions_the_lm_cannot_read_are_refused_or_warned(tmp_path, tiny_dir, data_files):
    rows = [json.loads(l) for l in (data_files / "train.jsonl").read_text().splitlines()]
    unreadable = tmp_path / "real.jsonl"  # mostly words outside the tiny LM's vocabulary
    unreadable.write_text("".join(json.dumps({"image": r["image"], "caption": "a hand-drawn seven on paper"}) + "\n"
                                  for r in rows))
    cfg = _toml(tmp_path, tiny_dir, data_files, data__train=str(unreadable), data__image_root=str(data_files))
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == EXIT_CODES[DataError], r.output
    (line,) = _lines(r)
    assert "unknown to the LM" in line and "hand-drawn" in line
    some = tmp_path / "some.jsonl"  # one unknown word in five or six: trains, with a warning
    some.write_text("".join(json.dumps({"image": r["image"], "caption": r["caption"] + " drawn"}) + "\n"
                            for r in rows))
    cfg = _toml(tmp_path, tiny_dir, data_files, data__train=str(some), data__image_root=str(data_files))
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg), "--rounds", "1"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "unknown to the LM" in r.output and "'drawn'" in r.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.05 < m["data"]["unknown_token_rate"] < 0.5


def test_skipped_records_are_counted_on_the_console(tmp_path, tiny_dir, data_files):
    bad = tmp_path / "bad.jsonl"
    good = (data_files / "train.jsonl").read_text()
    bad.write_text(good + json.dumps({"image": "img/404.png", "caption": "a dot"}) + "\n")
    cfg = _toml(tmp_path, tiny_dir, data_files, data__train=str(bad), data__image_root=str(data_files),
                data__bad_records="skip")
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg), "--rounds", "1"])
    assert r.exit_code == 0, r.output
    assert "kept 64 record(s), skipped 1" in r.output and "bad.jsonl:65" in r.output


def test_evaluation_and_model_loading_say_what_they_do(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files, train__rounds=1)
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "loading the frozen models" in r.output and "models loaded in" in r.output
    assert "evaluating the projector after 1 round(s) on 64 held-out captions" in r.output
    assert "evaluated in" in r.output


def test_a_first_world_build_reports_progress_while_it_runs(tmp_path, monkeypatch):
    import time

    import fedalign.silo.sources as sources
    import fedalign.world as world
    from fedalign.protocol.config.silo import load_silo_config
    from fedalign.world.build import WorldArtifacts

    def slow_build(spec, cache_dir=None):
        time.sleep(0.5)
        return WorldArtifacts(tmp_path / "w" / "vision", tmp_path / "w" / "lm", spec, True)

    monkeypatch.setattr(world, "build_world", slow_build)
    monkeypatch.setattr(sources, "WORLD_BUILD_TICK_S", 0.1)
    lines: list[str] = []
    cfg = load_silo_config(None, {"data.world.cache_dir": str(tmp_path / "cache")})
    sources.model_paths(cfg, notify=lines.append)
    assert str(tmp_path / "cache") in lines[0]
    assert any("still building" in l for l in lines) and "built and cached" in lines[-1]


def test_a_federated_run_refuses_a_local_runs_state(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files, train__rounds=1)
    assert runner.invoke(app, ["train", "--local", "-c", str(cfg)]).exit_code == 0
    r = runner.invoke(app, ["train", "-c", str(cfg)])
    assert r.exit_code == EXIT_CODES[ConfigError], r.output
    (line,) = _lines(r)
    assert "local run's state" in line


def test_describe_and_init_make_a_projector_that_fits(tmp_path, tiny_dir, data_files):
    from safetensors import safe_open

    from fedalign.aggregator.cli import build_app
    from fedalign.protocol.config.silo import load_silo_config
    from fedalign.silo.session import SiloSession

    cfg = _toml(tmp_path, tiny_dir, data_files)
    r = runner.invoke(app, ["describe", "-c", str(cfg), "--out", str(tmp_path / "a.card.json")])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "a.card.json").read_text())
    other = {**card, "d_model": card["d_model"] + 8, "llm": "another-lm"}
    (tmp_path / "b.card.json").write_text(json.dumps(other))
    agg = build_app()
    init = tmp_path / "init.safetensors"
    r = runner.invoke(agg, ["init", "--model-card", str(tmp_path / "a.card.json"), "--model-card",
                            str(tmp_path / "b.card.json"), "--out", str(init)])
    assert r.exit_code == EXIT_CODES[ConfigError] and "disagree" in r.output and "another-lm" in r.output
    assert not init.exists()
    r = runner.invoke(agg, ["init", "--model-card", str(tmp_path / "a.card.json"), "--out", str(init)])
    assert r.exit_code == 0, r.output
    with safe_open(str(init), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert f.metadata()["llm"] == card["llm"]
    session = SiloSession(load_silo_config(cfg))
    assert shapes == {k: tuple(v.shape) for k, v in session.initial_params().items()}


def test_sampling_the_whole_data_every_round_composes_the_rounds(tmp_path, tiny_dir, data_files):
    """Pooled sampling through the silo's own config (docs/silo.md): shard_size at or above the data,
    one pass per round, max_passes = rounds. Every round Poisson-samples all 64 records (q = 8/64),
    and the ε spent is the three rounds composed, as the plan said before training."""
    from fedalign.silo.privacy import compute_epsilon, noise_for_budget

    cfg = _toml(tmp_path, tiny_dir, data_files, data__shard_size=1000, data__max_passes=3, train__rounds=3,
                privacy__enabled=True, privacy__epsilon=8.0)
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["rounds_completed"] == 3 and m["samples_seen"] == 3 * 64
    sigma = noise_for_budget(8.0, 1e-5, 8 / 64, 2, passes=3)
    assert f"σ={sigma:.4g}" in r.output and "q=0.125" in r.output
    assert m["epsilon_spent"] == pytest.approx(compute_epsilon([(sigma, 8 / 64, 2)] * 3, 1e-5), rel=1e-6)
    assert 7.5 < m["epsilon_spent"] <= 8.0
    charges = [json.loads(l) for l in (tmp_path / "out" / "state" / "ledger.jsonl").read_text().splitlines()]
    rounds = [c for c in charges if c["kind"] == "privacy_charge"]
    assert [(c.get("pass_index"), c.get("shard_size"), c.get("sample_rate")) for c in rounds] == \
        [(p, 64, 0.125) for p in range(3)], rounds
