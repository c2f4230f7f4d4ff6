"""examples/clipart's runner and table without the model: a silo trained alone (local-only and
centralized rows) applies its own updates θ ← θ + Δ round by round through the federation's
``local_update``; DP rows at several ε get their own keys; the table lists issue 27's rows, marks
the ones a run did not make "not run (time)", and reads the local-only row's best single silo."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from example_modules import load_example


def _load(name: str):
    return load_example("clipart", name)


class _Silo:
    """A stand-in Federation: silo k's update in round t is (k + 1)·(t + 1) on every weight."""

    def __init__(self):
        self.calls = []

    def init_params(self):
        return {"w": torch.zeros(2)}

    def local_update(self, params, silo, rnd, prox_mu):
        self.calls.append((silo, rnd, params["w"].clone()))
        return SimpleNamespace(delta={"w": torch.full((2,), float((silo + 1) * (rnd + 1)))})


def test_a_silo_alone_applies_its_own_updates_round_by_round():
    run = _load("run")
    prob = _Silo()
    out = run.train_alone(prob, 2, 3)
    assert torch.equal(out["w"], torch.full((2,), 3.0 * (1 + 2 + 3)))
    assert [(s, t) for s, t, _ in prob.calls] == [(2, 0), (2, 1), (2, 2)]
    assert [float(p[0]) for _, _, p in prob.calls] == [0.0, 3.0, 9.0]  # each round from the last one's θ
    assert run.row_key("dp_fedavg", 8.0, 8.0) == "dp_fedavg" and run.row_key("local", None, 8.0) == "local"
    assert run.row_key("dp_fedcmp_sub", 2.0, 8.0) == "dp_fedcmp_sub@eps2"
    assert {"local", "dp_local", "central", "dp_fedavgm", "fedcmp_r64"} <= set(run.CONFIGS)
    assert run.row_strategy("fedcmp", 16, 8) == ("fedcmp", 16) and run.row_strategy("fedcmp_r64", 16, 8) == ("fedcmp", 64)
    assert run.row_strategy("dp_fedcmp_sub", 16, 8) == ("fedcmp", 8)
    assert run.row_strategy("fedcmp_off", 16, 8) == ("fedcmp", 16) and run.row_strategy("dp_local", 16, 8) == ("local", 16)


def _seed(seed, rows):
    settings = dict(warm_passes=2, batch=8, lr=0.02, rounds=2, shard=64, dp_rounds=2, dp_shard=64, dp_batch=64,
                    dp_micro=128, dp_passes=1.0, dp_clip=1.0, dp_lr=0.003, dp_epsilon=8.0, dp_subspace=16, rank=64)
    data = dict(drawings=10, records=10, silos=[3, 3], test=2, eval_nll=2, eval_retrieval=10, public=2)
    return {"seed": seed, "no_image": {"nll": 8.0, "retrieval": 0.1, "retrieval_pmi": 0.1}, "rows": rows,
            "settings": settings, "data": data, "tower": "t"}


def _r(nll, up=100, **kw):
    return {"nll": nll, "retrieval": 0.1, "retrieval_pmi": 0.1, "upload_bytes_per_silo_per_round": up, **kw}


def test_table_rows_not_run_and_best_silo():
    table = _load("table")
    seeds = [_seed(s, {"warm": _r(5.0 + s / 100, 0), "fedavg": _r(4.0), "fedavgm": _r(4.0), "fedcmp": _r(3.9),
                       "dp_fedavg": _r(4.4, 400, epsilon=7.99, noise_to_clip=1.0),
                       "dp_fedcmp_sub": _r(4.4, 100, epsilon=7.99, noise_to_clip=1.0),
                       "local": {**_r(4.8, 0), "best_silo": 1, "best": _r(4.5, 0)}}) for s in (0, 1)]
    text = table.build(seeds)
    assert "| local-only, no DP: best single silo (silo 1/1 by seed) | 128/silo | 4.500 ± 0.000 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| DP FedAvg ε 8 beats the best silo alone without DP"))
    assert "| -0.100 ± 0.000 (n=2) |" in line and line.endswith("| yes |")  # 4.4 − 4.5, the same on both seeds
    assert "beats the best silo alone under DP" not in text  # dp_local not run
    assert "| (context) silos that end lower in DP FedAvg ε 8 than alone without DP, over silos and seeds | 0 of 0 |" \
        not in text  # local rows without per-silo results: no line
    for s in seeds:
        s["rows"]["local"]["per_silo"] = [_r(4.3), _r(4.9)]  # DP FedAvg 4.4: lower than one of the two
    assert "| (context) silos that end lower in DP FedAvg ε 8 than alone without DP, over silos and seeds | 2 of 4 |" \
        in table.build(seeds)
    assert "| centralized, no DP (all silos pooled) | not run (time) |" in text
    assert "| FedAvg, DP ε 2 | not run (time) |" in text
    assert "| FedAvg, DP ε 8 | 128/silo | 4.400 ± 0.000 |" in text
    assert "| local-only, DP ε 1: mean over silos | not run (time) |" in text
    assert "| local-only, DP ε 4: best single silo | not run (time) |" in text  # not the ε-8 row's best silo
    seeds[0]["rows"]["dp_local"] = {**_r(4.6, 0, epsilon=7.99, noise_to_clip=1.0), "best_silo": 2, "best": _r(4.3, 0)}
    seeds[0]["rows"]["dp_local@eps4"] = {**_r(4.7, 0, epsilon=4.0, noise_to_clip=2.0), "best_silo": 3,
                                         "best": _r(4.45, 0)}
    text = table.build(seeds)
    assert "| local-only, DP ε 8: best single silo (silo 2 by seed) | 128/silo | 4.300 (n=1) |" in text
    assert "| local-only, DP ε 4: best single silo (silo 3 by seed) | 128/silo | 4.450 (n=1) |" in text
    seeds[1]["rows"]["dp_local"] = {**seeds[0]["rows"]["dp_local"], "best": _r(4.41, 0)}
    seeds[0]["rows"]["dp_local"]["best"] = _r(4.39, 0)  # DP FedAvg 4.4 − (4.39, 4.41): a tie, not a win
    line = next(x for x in table.build(seeds).splitlines() if x.startswith("| DP FedAvg ε 8 beats the best silo "
                                                                          "alone under DP"))
    assert "| 0.000 ± 0.014 (n=2) |" in line and line.endswith("| **no: missed** |")
    del seeds[0]["rows"]["dp_local"], seeds[0]["rows"]["dp_local@eps4"], seeds[1]["rows"]["dp_local"]
    text = table.build(seeds)
    # DP FedAvg closes (5.005 - 4.4) / (5.005 - 4.0) ≈ 0.60 of the gap: met; Fed-CMP ties at 4× less upload
    assert "| DP FedAvg ε 8 closes ≥ 50% of the gap warm start → non-DP FedAvg (NLL) | 0.60" in text
    line = next(x for x in text.splitlines() if x.startswith("| … at ≥ 3× less upload"))
    assert "4.00" in line and line.endswith("| yes |")
    assert "Fed-CMP rank 64, DP ε 8" not in text  # an optional row, absent when not run
    assert "without the final flush" not in text
    seeds[0]["rows"]["fedcmp_noflush"] = _r(3.95)
    text = table.build(seeds)
    assert "| Fed-CMP without the final flush of its residuals, no DP | 128/silo | 3.950 (n=1) |" in text
    assert "| (context) what the final flush is worth without DP: NLL(Fed-CMP) − NLL(Fed-CMP without the flush) " \
           "| -0.050 (n=1) | context |" in text


def test_table_shows_fedcmp_without_reliability_only_when_run():
    table = _load("table")
    seeds = [_seed(s, {"warm": _r(5.0, 0), "fedavg": _r(4.0), "fedavgm": _r(4.0 + s / 100), "fedcmp": _r(4.1)})
             for s in (0, 1)]
    assert "reliability off" not in table.build(seeds)
    assert "fedcmp_off" in _load("run").CONFIGS
    seeds[0]["rows"]["fedcmp_off"] = _r(3.98)
    seeds[1]["rows"]["fedcmp_off"] = _r(4.0)
    text = table.build(seeds)
    assert "| Fed-CMP with reliability off (no public reference), no DP | 128/silo | 3.990 ± 0.014 |" in text
    # paired differences −0.02 and −0.01: beats FedAvgM; the default Fed-CMP (+0.1, +0.09) does not
    line = next(x for x in text.splitlines() if x.startswith("| Fed-CMP with reliability off ties or beats"))
    assert "-0.015 ± 0.007 (n=2)" in line and line.endswith("| yes |")
    line = next(x for x in text.splitlines() if x.startswith("| non-DP Fed-CMP ties or beats FedAvgM"))
    assert line.endswith("| **no: missed** |")
    assert "rank 64, no DP" not in text and "Environment" not in text
    seeds[0]["rows"]["fedcmp_r64"], seeds[1]["rows"]["fedcmp_r64"] = _r(4.05), _r(4.02)
    env = {"torch": "2.13.0", "pillow": "13.0.0", "features": ["clipart-features-x.safetensors"]}
    seeds[0]["env"] = seeds[1]["env"] = env
    text = table.build(seeds)
    assert "| Fed-CMP rank 64, no DP | 128/silo | 4.035 ± 0.021 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| Fed-CMP at rank 64 ties or beats FedAvgM"))
    assert "0.030 ± 0.028 (n=2)" in line and line.endswith("| **no: missed** |")  # +0.05, +0.01: mean > std
    assert "Environment: torch 2.13.0, pillow 13.0.0; tower features clipart-features-x.safetensors." in text
    seeds[1]["env"] = {**env, "pillow": "12.3.0"}
    assert "Environment (of the first seed; the seeds differ): torch 2.13.0, pillow 13.0.0" in table.build(seeds)


def test_ceilings_projects_onto_the_top_left_singular_directions(tmp_path, capsys):
    ceilings = _load("ceilings")
    u = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64))[0]
    m = u @ torch.diag(torch.tensor([5.0, 3.0], dtype=torch.float64)) @ torch.randn(2, 6, dtype=torch.float64)
    m = m + 1e-3 * torch.randn(8, 6, dtype=torch.float64)
    U = ceilings.left(m.float(), 2)
    assert U.shape == (8, 2) and U.dtype == torch.float32
    assert torch.allclose(U.double() @ U.double().T, u @ u.T, atol=1e-2)  # the same span as m's top 2
    assert ceilings.main(["--runs", str(tmp_path)]) == 2  # no run.py output there: one line, exit 2
    assert "run examples/clipart/run.py --out" in capsys.readouterr().err


def test_the_committed_table_is_made_from_the_committed_seed_files():
    # results/clipart.md must be table.py's output of results/clipart_runs: no figure typed by hand, and a
    # table whose seed files were lost (runs/ is not committed) cannot come back
    from pathlib import Path

    table = _load("table")
    results = Path(__file__).resolve().parents[2] / "results"
    seeds = table.load(results / "clipart_runs")
    assert [s["seed"] for s in seeds] == [0, 1, 2]
    assert (results / "clipart.md").read_text() == table.build(seeds)
    assert sorted(p.name for p in (results / "clipart_runs").iterdir() if not p.name.endswith(".safetensors")) == [
        "captions.png", "seed0.json", "seed1.json", "seed2.json"]
