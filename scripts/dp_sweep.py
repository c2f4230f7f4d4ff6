"""DP recipe search and the privacy-utility runs on the embedded world, on one set of prepared shards.

    python scripts/dp_sweep.py --scenario label --seed 0 --rounds 5 --samples-per-round 1024 \
        --config '{"name": "fedavg eps8", "strategy": "fedavg", "eps": 8, "batch_size": 512, "lr": 3e-3}' ...
    python scripts/dp_sweep.py ... --grid utility       # the privacy-utility grid (scripts/dp_table.py)

The world problem (shards, tower features, held-out set) is built once per (scenario, seed); each
configuration then trains from θ_0 on the same shards: DP FedAvg / FedAvgM / Fed-CMP and the
non-DP reference differ only in what the configuration says. One JSON line per configuration is
appended to ``--log`` (default results/dp_runs/<scenario>-s<seed>.jsonl); configurations already
there (same data and configuration) are skipped, so a killed sweep resumes. A Fed-CMP row with error
feedback also carries the residual probe (:func:`residual_probe`): ``residual_share``, ``residual_norms``
and the held-out ``nll_flushed`` / ``mc_accuracy_flushed`` had the silos' last residuals been applied.

Configuration keys: name, strategy (simulator preset or fedcmp), eps (None = no DP), delta (1e-5),
clip, noise (expert σ; default derived from eps), batch_size, lr, optimizer, local_epochs,
physical_batch_size, subspace_rank (train W_t + U·C in a public basis, silo.subspace), subspace_basis
(cumulative | public: where that basis comes from), sampling (shards | pooled: a round trains on its own
shard, or Poisson-samples the silo's whole data), public_warm_start (E passes over the coordinator's public
set give θ_0), and for fedcmp: rank, server_lr, beta, error_feedback.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from fedalign.host.process import apply_process_defaults  # noqa: E402

apply_process_defaults()


TRAIN_KEYS = ("batch_size", "lr", "optimizer", "local_epochs", "physical_batch_size", "subspace_rank",
              "subspace_basis", "sampling", "public_warm_start")
FEDCMP_KEYS = ("rank", "server_lr", "beta", "error_feedback", "reliability", "kappa", "rho_smoothing")


def build(scenario: str, seed: int, silos: int, rounds: int, samples: int, test_size: int, device: str = "cpu"):
    from fedalign.lab.scenarios import ProblemOptions, build_problem

    opts = ProblemOptions(n_silos=silos, rounds=rounds, seed=seed, samples_per_round=samples,
                          extra={"test_size": test_size, "device": device})
    return build_problem(scenario, opts)


def run_config(fed, cfg: dict, rounds: int, seed: int) -> dict:
    from fedalign.lab.cli import build_strategy
    from fedalign.lab.runner import simulate_problem

    eps = cfg.get("eps")
    dp = None if eps is None else dict(noise_multiplier=cfg.get("noise"), max_grad_norm=cfg.get("clip", 1.0),
                                       epsilon=float(eps), delta=cfg.get("delta", 1e-5))
    train = {k: cfg[k] for k in TRAIN_KEYS if k in cfg}
    from fedalign.lab.world import DEFAULTS

    base = {k: DEFAULTS[k] for k in TRAIN_KEYS if k in DEFAULTS}  # every run starts from the defaults
    fed.configure(dp=dp, **{**base, **train})
    fc = {k: cfg[k] for k in FEDCMP_KEYS if k in cfg} if cfg["strategy"] == "fedcmp" else {}
    strat = build_strategy(cfg["strategy"], dp=dp is not None, seed=seed, **fc)
    t0 = time.perf_counter()
    res = simulate_problem(fed, strat, rounds, eval_every=rounds)
    secs = time.perf_counter() - t0
    out = {"name": cfg["name"], "config": cfg, "nll": res.final["nll"], "mc_accuracy": res.final.get("mc_accuracy"),
           "seconds": secs, "train_seconds": sum(r.get("seconds_train_aggregate", 0.0) for r in res.records),
           "round_seconds": [r.get("seconds_train_aggregate") for r in res.records[1:]],
           "train_loss_last": res.records[-1].get("train_loss"),
           **{k: res.final[k] for k in ("nll_rare", "nll_common") if k in res.final},
           "nll_start": res.records[0].get("nll")}  # θ_0's (the public warm start's, if any)
    out.update(residual_probe(fed, res))
    if getattr(fed, "rare", ()):
        out["rare"] = list(fed.rare)
    if fed.dp_plan is not None:
        p = fed.dp_plan
        out.update(sigma=p.noise_multiplier, q=p.sample_rate, steps=p.steps, epsilon=p.epsilon)
    return out


def residual_probe(fed, res) -> dict:
    """Fed-CMP with error feedback: what its silos' residuals still hold after the last round, and the
    held-out scores had each silo's residual been applied then (θ_T + Σ w_k e_k / Σ w_k; a diagnostic of
    the lab's view, not something the protocol sends). ``residual_share`` = ‖that step‖ / ‖θ_T − θ_0‖."""
    from fedalign.fedcmp.core import E, key

    states, w = res.silo_states, res.last_weights
    names = [n for n in res.params if states and key(n, E) in states[0]]
    if not names:
        return {}
    theta0 = fed.init_params()
    flush = {n: sum(wk * s[key(n, E)] for wk, s in zip(w, states)) / sum(w) for n in names}
    moved = sum(float((res.params[n] - theta0[n]).norm() ** 2) for n in names) ** 0.5
    ev = fed.evaluate({**res.params, **{n: res.params[n] + flush[n] for n in names}})
    return {"nll_flushed": ev["nll"], "mc_accuracy_flushed": ev.get("mc_accuracy"),
            "residual_share": sum(float(f.norm() ** 2) for f in flush.values()) ** 0.5 / moved,
            "residual_norms": [sum(float(s[key(n, E)].norm() ** 2) for n in names) ** 0.5 for s in states]}


def _what(cfg: dict) -> dict:
    """What a configuration runs (its labels aside)."""
    return {k: v for k, v in cfg.items() if k not in ("name", "method")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="label")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--silos", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples-per-round", type=int, default=1024)
    ap.add_argument("--test-size", type=int, default=300)
    ap.add_argument("--config", action="append", default=[], help="JSON object (repeatable)")
    ap.add_argument("--configs", type=Path, help="file with one JSON configuration per line")
    ap.add_argument("--log", type=Path)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    cfgs = [json.loads(c) for c in args.config]
    if args.configs:
        cfgs += [json.loads(l) for l in args.configs.read_text().splitlines() if l.strip() and not l.startswith("#")]
    data = dict(scenario=args.scenario, seed=args.seed, silos=args.silos, rounds=args.rounds,
                samples_per_round=args.samples_per_round, test_size=args.test_size)
    log = args.log or ROOT / "results" / "dp_runs" / f"{args.scenario}-s{args.seed}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = []  # a configuration is done when a line has the same data and the same configuration
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if r.get("data") == data:
                done.append(_what(r["config"]))
    todo = [c for c in cfgs if _what(c) not in done]
    if not todo:
        print("nothing to do")
        return
    t0 = time.perf_counter()
    fed = build(args.scenario, args.seed, args.silos, args.rounds, args.samples_per_round, args.test_size, args.device)
    base = fed.no_image()
    print(f"problem ready in {time.perf_counter() - t0:.0f}s; no image: {base}", flush=True)
    for cfg in todo:
        r = run_config(fed, cfg, args.rounds, args.seed)
        r.update(data=data, **base)
        r["nll_cut"] = base["nll_no_image"] - r["nll"]
        with log.open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(f"{r['name']:40s} nll {r['nll']:.4f} cut {r['nll_cut']:.4f} mc {r['mc_accuracy']:.3f} "
              f"sigma {r.get('sigma', 0):.3g} {r['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
