"""Issue 27, item 2: the aggregator's run_start ledger entry records θ_0 (its source, the SHA-256 of the
`[init] params` file and of its tensors), so an auditor sees which public warm start a federation began
from. Before, the ledger named no θ_0 at all."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from fedalign.aggregator.audit import record_run_start
from fedalign.aggregator.app import initial_params, theta0_record
from fedalign.protocol.config.aggregator import load_aggregator_config
from fedalign.compliance.ledger import Ledger, read_ledger


def _config(tmp_path, init_lines: str):
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text(f'[server]\nsecret_key = "k"\n[init]\n{init_lines}\n[output]\ndir = "out"\n')
    return load_aggregator_config(cfg)


def _run_start(tmp_path, cfg):
    led = Ledger(tmp_path / "ledger.jsonl")
    roster = SimpleNamespace(silos={"a": None, "b": None})
    record_run_start(led, cfg, None, roster, curve_public=None, resumed_round=0,
                     init=theta0_record(cfg, initial_params(cfg)))
    (entry,) = [e for e in read_ledger(tmp_path / "ledger.jsonl") if e.kind == "run_start"]
    from importlib.metadata import version  # the software the run's figures came from

    assert entry.fields["software"]["fedalign"] == version("fedalign") and entry.fields["software"]["tenseal"]
    return entry.fields["init"]


def test_run_start_records_the_warm_start_file_and_its_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    warm = {"0.weight": torch.randn(6, 4, generator=g), "0.bias": torch.randn(6, generator=g)}
    path = tmp_path / "theta0.safetensors"
    save_file(warm, str(path))
    init = _run_start(tmp_path, _config(tmp_path, f'params = "{path}"'))
    assert init["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "theta0.safetensors" in init["source"]
    h = hashlib.sha256()
    for k in sorted(warm):
        h.update(f"{k}|{warm[k].dtype}|{tuple(warm[k].shape)}|".encode())
        h.update(warm[k].numpy().tobytes())
    assert init["params_sha256"] == h.hexdigest()

    other = tmp_path / "other"
    other.mkdir()
    warm["0.bias"][0] += 1e-3  # one number changed: another θ_0, another digest
    save_file(warm, str(other / "theta0.safetensors"))
    init2 = _run_start(other, _config(other, f'params = "{other / "theta0.safetensors"}"'))
    assert init2["params_sha256"] != init["params_sha256"] and init2["file_sha256"] != init["file_sha256"]


def test_run_start_records_a_fresh_projector_by_its_tensors(tmp_path):
    init = _run_start(tmp_path, _config(tmp_path, 'd_vision = 4\nd_model = 6\nprojector = "linear"'))
    assert init["file_sha256"] is None and len(init["params_sha256"]) == 64
    assert "init.d_vision = 4" in init["source"]
