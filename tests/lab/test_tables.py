"""The fedcmp family's tables through the one writer: means, stds, verdicts, payload table (no training here)."""

import csv
import json

from fedalign.lab.experiments import fedcmp
from fedalign.lab.tables import write_table


def test_table_means_stds_and_verdicts(tmp_path):
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
    write_table("fedcmp", runs, tmp_path)
    rows = list(csv.DictReader((tmp_path / "fedcmp_results.csv").open()))
    fa = next(r for r in rows if r["config"] == "FedAvg")
    assert float(fa["nll_mean"]) == 3.1 and abs(float(fa["nll_std"]) - 0.1) < 1e-12 and fa["seeds"] == "3"
    md = (tmp_path / "fedcmp_results.md").read_text()
    # Fed-CMP 2.6 ± 0.1 vs FedAvgM 2.1 ± 0.1: loses; vs FedAvg 3.1 ± 0.1: wins
    assert "strongest baseline (FedAvgM β=0.5): **loses**" in md
    assert "vs FedAvg: **wins**" in md
    assert "24.4× smaller" in md  # LLaVA-1.5 shapes at r = 64


def test_verdict_ties_within_spread():
    assert fedcmp._verdict((1.0, 0.1, 3), (1.05, 0.02, 3)) == "ties"
    assert fedcmp._verdict((1.0, 0.01, 3), (1.05, 0.02, 3)) == "wins"


def test_best_single_silo_row_and_scenario_check(tmp_path):
    """The best single silo is read off the local-only runs; the scenario check compares FedAvg
    with centralized and with it, against the seed spread."""
    runs = tmp_path / "runs"
    runs.mkdir()
    lines = []
    for seed, (fedavg, central, best, other) in enumerate([(1.0, 0.8, 1.3, 1.5), (1.1, 0.85, 1.35, 1.6),
                                                          (1.05, 0.9, 1.4, 1.7)]):
        base = {"scenario": "domain", "seed": seed, "dp": False, "mc_accuracy": 0.5, "presence_f1": 0.6,
                "upload_bytes_per_silo_per_round": 0.0, "seconds": 1.0}
        lines += [{**base, "label": "FedAvg", "group": "baseline", "nll": fedavg},
                  {**base, "label": "centralized", "group": "reference", "nll": central},
                  {**base, "label": "local-only", "group": "reference", "nll": (best + other) / 2,
                   "per_silo": [{"nll": other}, {"nll": best}], "best_silo": 1, "best_silo_nll": best,
                   "best_silo_mc_accuracy": 0.4, "best_silo_presence_f1": 0.6}]
    (runs / "domain-s0.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    write_table("fedcmp", runs, tmp_path)
    rows = {r["config"]: r for r in csv.DictReader((tmp_path / "fedcmp_results.csv").open())}
    assert abs(float(rows["best single silo"]["nll_mean"]) - 1.35) < 1e-12
    assert abs(float(rows["best single silo"]["mc_accuracy_mean"]) - 0.4) < 1e-12
    md = (tmp_path / "fedcmp_results.md").read_text()
    # per-seed gaps: FedAvg - centralized 0.2, 0.25, 0.15; best silo - FedAvg 0.3, 0.25, 0.35
    assert "FedAvg worse than centralized by +0.2000 ± 0.0500 NLL (per-seed gap, 3 seeds, all worse" in md
    assert "FedAvg better than best single silo by +0.3000 ± 0.0500" in md and "**NO**" not in md
    # a best silo that beats FedAvg in one seed fails the check
    rows_close = [dict(x, best_silo_nll=x["best_silo_nll"] - 0.28) if x["label"] == "local-only" else x
                  for x in lines]
    (runs / "domain-s0.jsonl").write_text("\n".join(json.dumps(x) for x in rows_close) + "\n")
    write_table("fedcmp", runs, tmp_path)
    md = (tmp_path / "fedcmp_results.md").read_text()
    assert "better than best single silo by +0.0200 ± 0.0500 NLL (per-seed gap, 3 seeds, not all better" in md
    assert "**NO**" in md
