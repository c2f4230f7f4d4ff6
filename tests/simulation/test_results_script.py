"""scripts/results.py: tables from run lines, verdicts, payload table (no training here)."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("results_script", ROOT / "scripts" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["results_script"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_table_means_stds_and_verdicts(tmp_path):
    mod = _load()
    runs = tmp_path / "runs"
    runs.mkdir()
    lines = []
    for seed, (a, m, c) in enumerate([(3.0, 2.0, 2.5), (3.2, 2.1, 2.6), (3.1, 2.2, 2.7)]):
        for label, nll, group in (("FedAvg", a, "baseline"), ("FedAvgM β=0.5", m, "baseline"),
                                  ("Fed-CMP (default)", c, "fedcmp")):
            lines.append({"scenario": "label", "seed": seed, "dp": False, "label": label, "group": group,
                          "nll": nll, "mc_accuracy": 0.5, "presence_f1": 0.6, "upload_bytes_per_silo_per_round": 100.0,
                          "seconds": 1.0})
    (runs / "label-s0.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    mod.table(runs=runs, out=tmp_path)
    rows = list(csv.DictReader((tmp_path / "fedcmp_results.csv").open()))
    fa = next(r for r in rows if r["config"] == "FedAvg")
    assert float(fa["nll_mean"]) == 3.1 and abs(float(fa["nll_std"]) - 0.1) < 1e-12 and fa["seeds"] == "3"
    md = (tmp_path / "fedcmp_results.md").read_text()
    # Fed-CMP 2.6 ± 0.1 vs FedAvgM 2.1 ± 0.1: loses; vs FedAvg 3.1 ± 0.1: wins
    assert "strongest baseline (FedAvgM β=0.5): **loses**" in md
    assert "vs FedAvg: **wins**" in md
    assert "24.4× smaller" in md  # LLaVA-1.5 shapes at r = 64


def test_verdict_ties_within_spread():
    mod = _load()
    assert mod._verdict((1.0, 0.1, 3), (1.05, 0.02, 3)) == "ties"
    assert mod._verdict((1.0, 0.01, 3), (1.05, 0.02, 3)) == "wins"
