"""`silo train --local` in-process: outputs on success; one line, non-zero exit, nothing written on bad input."""

import json

import pytest
from typer.testing import CliRunner

from fedalign.host.cli_errors import EXIT_CODES
from fedalign.protocol.errors import ConfigError, DataError, ModelLoadError, PrivacyBudgetExceeded
from fedalign.silo.cli import app

runner = CliRunner()


def _toml(tmp_path, tiny_dir, data_files, **extra):
    sections = {
        "model": {"vision_tower": str(tiny_dir / "vit"), "llm": str(tiny_dir / "llama"), "device": "cpu"},
        "data": {"source": "files", "train": str(data_files / "train.jsonl"), "eval": str(data_files / "train.json"),
                 "shard_size": 32},
        "train": {"rounds": 2, "batch_size": 8, "local_steps": 2},
        "output": {"dir": str(tmp_path / "out")},
    }
    for key, value in extra.items():
        sec, field = key.split("__")
        sections.setdefault(sec, {})[field] = value
    lines = []
    for sec, kv in sections.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in kv.items()]
    p = tmp_path / "silo.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_local_training_writes_metrics_and_exports(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files, privacy__enabled=True, privacy__epsilon=50.0)
    r = runner.invoke(app, ["train", "--local", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    m = json.loads((out / "metrics.json").read_text())
    for k in ("heldout_nll", "heldout_nll_text_only", "samples_seen", "epsilon_spent"):
        assert k in m
    assert m["samples_seen"] == 64 and m["rounds_completed"] == 2 and 0 < m["epsilon_spent"] <= 50
    assert (out / "mm_projector.safetensors").is_file() and (out / "hf_llava_projector.safetensors").is_file()
    kinds = [json.loads(line)["kind"] for line in (out / "state" / "ledger.jsonl").read_text().splitlines()]
    assert kinds.count("privacy_charge") == 2 and kinds.count("round") == 2
    # a restart on the same state never re-reads used samples: the one pass is spent
    again = runner.invoke(app, ["train", "--local", "--config", str(cfg)])
    assert again.exit_code == EXIT_CODES[DataError] and "spent" in again.output


def _fails_cleanly(r, exc_type, *needles, tmp_path):
    assert r.exit_code == EXIT_CODES[exc_type], r.output
    lines = [l for l in r.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], lines[0]
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert not (tmp_path / "out" / "mm_projector.safetensors").exists()


def test_bad_data_file(tmp_path, tiny_dir, data_files):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "img/000.png", "caption": "a dot"}) + "\n" + json.dumps(
        {"image": "img/404.png", "caption": "a dot"}) + "\n")
    cfg = _toml(tmp_path, tiny_dir, data_files, data__train=str(bad), data__image_root=str(data_files))
    _fails_cleanly(runner.invoke(app, ["train", "--local", "-c", str(cfg)]), DataError, "bad.jsonl:2",
                   tmp_path=tmp_path)


def test_wrong_model_path(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files, model__llm=str(tmp_path / "nope-llm"))
    _fails_cleanly(runner.invoke(app, ["train", "--local", "-c", str(cfg)]), ModelLoadError, "nope-llm",
                   tmp_path=tmp_path)


def test_impossible_budget(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files)
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg), "--dp", "--epsilon", "0.001"])
    _fails_cleanly(r, PrivacyBudgetExceeded, "impossible privacy budget", tmp_path=tmp_path)
    assert not (tmp_path / "out" / "state" / "cursor.json").exists()


def test_bad_config_field(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files, train__batch_size=0, privacy__epsilonn=3)
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg)])
    _fails_cleanly(r, ConfigError, "silo.toml", "train.batch_size", "privacy.epsilonn", tmp_path=tmp_path)


def test_debug_shows_the_traceback(tmp_path, tiny_dir, data_files):
    cfg = _toml(tmp_path, tiny_dir, data_files, model__vision_tower=str(tmp_path / "nope"))
    r = runner.invoke(app, ["train", "--local", "-c", str(cfg), "--debug"])
    assert r.exit_code == EXIT_CODES[ModelLoadError] and "Traceback" in r.output


def test_world_options_are_cli_overrides(tmp_path):
    pytest.importorskip("fedalign.world")
    r = runner.invoke(app, ["train", "--local", "--scenario", "label_skew", "--n-silos", "3", "--silo-index", "5",
                            "--out", str(tmp_path / "out")])
    _fails_cleanly(r, ConfigError, "silo_index 5 must be < n_silos 3", tmp_path=tmp_path)


def test_embedded_world_default_path(tmp_path):
    """No config file: the embedded world (tiny spec here) through the same from_pretrained path."""
    pytest.importorskip("fedalign.world")
    r = runner.invoke(app, ["train", "--local", "--out", str(tmp_path / "out"), "--rounds", "2",
                            "--scenario", "label_skew", "--n-silos", "3", "--silo-index", "1",
                            "--set", 'data.world.spec="tiny"', "--set", "data.world.samples_per_silo=48",
                            "--set", "data.world.test_size=16", "--set", "data.world.probe_samples=4",
                            "--set", "data.shard_size=24", "--set", "train.batch_size=8"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["samples_seen"] == 48 and m["data"]["scenario"] == "label_skew" and m["data"]["silo_index"] == 1
    assert {"heldout_nll", "heldout_nll_text_only", "mc_accuracy", "presence_f1"} <= m.keys()


def test_local_export_has_a_model_card(tmp_path, tiny_dir, data_files):
    """Beside the exported projector: README.md (0644) naming the models, shapes, data, rounds, scheme,
    (ε, δ), the ledger's final head and the command that verifies it (issue 26, item 8)."""
    import stat

    from fedalign.compliance.audit import ledger_head, read_entries

    cfg = _toml(tmp_path, tiny_dir, data_files, privacy__enabled=True, privacy__epsilon=50.0)
    r = runner.invoke(app, ["train", "--local", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert (out / "mm_projector.safetensors").exists()
    path = out / "README.md"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    card = path.read_text()
    assert card.startswith("---\nlibrary_name: fedalign\n") and "\n---\n" in card[4:]
    m = json.loads((out / "metrics.json").read_text())
    ledger = out / "state" / "ledger.jsonl"
    index, digest = ledger_head(ledger)
    assert read_entries(ledger)[-1]["kind"] == "run_end"  # the card names the head after the run's last entry
    for needle in (str(tiny_dir / "vit"), str(tiny_dir / "llama"), "projector kind: `mlp2x_gelu`", "`0.weight`",
                   "`mm_projector.safetensors`", "records, local: 64", "rounds done: 2, planned: 2",
                   "none (local training)", f"| local | {m['epsilon_spent']:.4g} | 1e-05 | this silo's accountant |",
                   f"`{index}:{digest}`", "silo audit verify --config silo.toml"):
        assert needle in card, needle
    assert "not recorded" not in card.replace('reads "not recorded"', "")
