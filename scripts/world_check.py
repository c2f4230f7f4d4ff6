"""Does alignment mean something on the embedded world, and do its scenarios separate methods?

Builds (or loads) the default world, trains the projector centrally with the project's own
trainer for a fixed step budget over several seeds, and measures by the frozen LM's
likelihood: held-out caption NLL with the image against the SAME LM without it (prefix
replaced by placeholders, and prefix left out; the lower of the two is the baseline),
4-way multiple-choice accuracy, presence accuracy/F1/yes-rate and attribute probes. Then,
per federated scenario, centralized training against every silo alone (same step budget,
same clean test split), and for the unreliable scenario centralized training without the
unreliable silos (only the scenarios named with --scenarios). Writes
results/world_check.{json,md} (and world_scenarios.{json,md}); ends with one JSON line.

    .venv/bin/python scripts/world_check.py                      # 3 seeds, 2 at a time
    .venv/bin/python scripts/world_check.py --seeds --scenarios iid unreliable
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from fedalign.host.process import apply_process_defaults  # noqa: E402

apply_process_defaults()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedalign.silo.evaluate import evaluate, prepare_eval, remove_image  # noqa: E402
from fedalign.silo.model import load_alignment_model  # noqa: E402
from fedalign.silo.sources import world_records  # noqa: E402
from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard, train_rounds  # noqa: E402
from fedalign.world import (  # noqa: E402
    SCENARIOS,
    WorldSpec,
    build_world,
    make_eval_items,
    make_samples,
    make_scenario,
    skew_report,
    text_only_prompt,
)


def train_projector(model, samples, *, steps: int, seed: int, lr: float, batch_size: int,
                    phases: int = 3, decay: float = 0.3):
    """Train the projector on ``samples`` for ``steps`` steps in ``phases`` rounds of the
    project's trainer, the learning rate multiplied by ``decay`` after each; returns the
    parameters (the model is left holding them)."""
    params = {k: v.clone() for k, v in model.projector_state().items()}
    shard = prepare_shard(model, world_records(samples, "world_check"))
    gen = torch.Generator().manual_seed(seed)
    for phase in range(phases):
        settings = TrainSettings(batch_size=batch_size, lr=lr * decay**phase, local_steps=max(1, steps // phases))
        trainer = LocalTrainer(model, settings, generator=gen)
        params, _ = train_rounds(trainer, params, lambda: shard, rounds=1)
    model.load_projector_state(params)
    return params


def fresh_model(art, seed: int, projector: str):
    return load_alignment_model(str(art.vision_path), str(art.lm_path), projector=projector, device="cpu",
                                generator=torch.Generator().manual_seed(seed))


def central_run(art, seed: int, args) -> dict:
    model = fresh_model(art, seed, args.projector)
    rng = np.random.default_rng([seed, 11])
    train = make_samples(args.train_size, rng)
    test = make_samples(args.test_size, np.random.default_rng([seed, 12]))
    items = make_eval_items(test, seed=seed)
    ev = prepare_eval(model, world_records(test, "world_check:test"), items, text_only_prompt=text_only_prompt)
    ev_drop = prepare_eval(model, world_records(test, "world_check:test"), (), text_only_prompt=remove_image)
    t0 = time.perf_counter()
    params = train_projector(model, train, steps=args.steps, seed=seed, lr=args.lr, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    model.load_projector_state(params)
    m = evaluate(model, ev)
    m_drop = evaluate(model, ev_drop)
    base_ph, base_none = m["heldout_nll_text_only"], m_drop["heldout_nll_text_only"]
    base = min(base_ph, base_none)
    return {
        "seed": seed,
        "heldout_nll_image": m["heldout_nll"],
        "heldout_nll_no_image_placeholders": base_ph,
        "heldout_nll_no_image_no_prefix": base_none,
        "nll_cut_vs_no_image": 1.0 - m["heldout_nll"] / base,
        "mc_accuracy": m.get("mc_accuracy"),
        "presence_accuracy": m.get("presence_accuracy"),
        "presence_f1": m.get("presence_f1"),
        "presence_yes_rate": m.get("presence_yes_rate"),
        "colour_accuracy": m.get("colour_accuracy"),
        "shape_accuracy": m.get("shape_accuracy"),
        "count_accuracy": m.get("count_accuracy"),
        "train_seconds": seconds,
    }


def scenario_run(art, name: str, seed: int, args) -> dict:
    sc = make_scenario(name, n_silos=args.n_silos, seed=seed, samples_per_silo=args.samples_per_silo,
                       test_size=args.scenario_test_size)
    model = fresh_model(art, seed, args.projector)
    init = model.projector_state()
    ev = prepare_eval(model, world_records(sc.test, "world_check:test"), make_eval_items(sc.test, seed=seed, kinds=("caption_mc",)),
                      text_only_prompt=text_only_prompt)

    def score(samples) -> dict:
        model.load_projector_state(init)
        params = train_projector(model, samples, steps=args.scenario_steps, seed=seed, lr=args.lr,
                                 batch_size=args.batch_size)
        model.load_projector_state(params)
        m = evaluate(model, ev, text_only_baseline=False)
        return {"nll": m["heldout_nll"], "mc": m.get("mc_accuracy")}

    pooled = [s for silo in sc.silos for s in silo]
    central = score(pooled)
    alone = [score(silo) for silo in sc.silos]
    best = min(range(len(alone)), key=lambda k: alone[k]["nll"])
    out = {"scenario": name, "seed": seed, "skew": skew_report(sc), "sizes": [len(s) for s in sc.silos],
           "centralized": central, "silo_alone": alone, "best_silo": best, "best_silo_alone": alone[best]}
    if sc.unreliable:
        clean = [s for k, silo in enumerate(sc.silos) if k not in sc.unreliable for s in silo]
        out["unreliable_silos"] = list(sc.unreliable)
        out["centralized_without_unreliable"] = score(clean)
    return out


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None], float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def write_reports(result: dict, out_dir: Path) -> None:
    """world_check.{json,md} for the centralized runs, world_scenarios.{json,md} for the scenarios."""
    out_dir.mkdir(parents=True, exist_ok=True)
    head = {k: v for k, v in result.items() if k not in ("runs", "summary", "scenarios")}
    if result["runs"]:
        central = {**head, "runs": result["runs"], "summary": result["summary"]}
        (out_dir / "world_check.json").write_text(json.dumps(central, indent=1))
        (out_dir / "world_check.md").write_text(_central_md(result))
    if result["scenarios"]:
        (out_dir / "world_scenarios.json").write_text(json.dumps({**head, "scenarios": result["scenarios"]}, indent=1))
        (out_dir / "world_scenarios.md").write_text(_scenarios_md(result))


def _central_md(result: dict) -> str:
    s = result["summary"]
    lines = [
        "# Embedded world check",
        "",
        f"World: `{result['world_dir']}` (spec seed {result['spec']['seed']}, built in "
        f"{result['build'].get('build_wall_seconds', float('nan')):.0f} s wall with "
        f"{result['build'].get('build_jobs', 1)} process(es): ViT {result['build'].get('vision_seconds', float('nan')):.0f} s, "
        f"LM {result['build'].get('lm_seconds', float('nan')):.0f} s).",
        f"Centralized projector ({result['args']['projector']}), {result['args']['steps']} steps of batch "
        f"{result['args']['batch_size']} on {result['args']['train_size']} samples; "
        f"{result['args']['test_size']} held-out samples; seeds {result['args']['seeds']}; mean ± std.",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key, (mu, sd) in s.items():
        lines.append(f"| {key} | {mu:.4f} ± {sd:.4f} |")
    lines += ["", "No-image baseline: the same frozen LM with the image replaced by placeholder tokens, or left",
              "out; the lower NLL of the two. Targets: NLL cut >= 50%, multiple-choice >= 80%.", ""]
    return "\n".join(lines) + "\n"


def _scenarios_md(result: dict) -> str:
    a = result["args"]
    lines = ["# Embedded world scenarios: centralized vs each silo alone",
             "",
             f"{a['n_silos']} silos, {a['samples_per_silo']} samples per silo (unreliable: Dirichlet sizes, same "
             f"total), {a['scenario_steps']} projector steps for each run, held-out caption NLL / 4-way MC on the "
             "scenario's clean pooled test split. The simulator adds FedAvg and the other strategies.",
             "",
             "| scenario | seed | skew | centralized NLL / MC | best silo alone NLL / MC | worst silo alone NLL | "
             "centralized w/o unreliable NLL / MC |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["scenarios"]:
        sk = r["skew"]
        skew = (f"tv shape {sk['tv_shape']:.2f}, domain {sk['tv_domain']:.2f}, style {sk['tv_style']:.2f}, "
                f"size ratio {sk['size_max_over_min']:.1f}, corrupted {sk['corrupted_share']:.2f}")
        worst = max(x["nll"] for x in r["silo_alone"])
        wo = r.get("centralized_without_unreliable")
        wo_s = f"{wo['nll']:.3f} / {wo['mc']:.3f}" if wo else "-"
        lines.append(f"| {r['scenario']} | {r['seed']} | {skew} | {r['centralized']['nll']:.3f} / "
                     f"{r['centralized']['mc']:.3f} | {r['best_silo_alone']['nll']:.3f} / "
                     f"{r['best_silo_alone']['mc']:.3f} | {worst:.3f} | {wo_s} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="centralized seeds (none: skip)")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--projector", default="mlp2x_gelu", choices=["linear", "mlp2x_gelu"])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=16000)
    ap.add_argument("--test-size", type=int, default=400)
    ap.add_argument("--jobs", type=int, default=2, help="centralized seeds run side by side (<= 2 here)")
    ap.add_argument("--no-scenarios", action="store_true")
    ap.add_argument("--scenarios", nargs="*", default=[], choices=list(SCENARIOS),
                    help="also run these scenarios (centralized vs each silo alone at a fixed step budget); "
                         "the simulator's results table is where FedAvg is compared")
    ap.add_argument("--scenario-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--scenario-steps", type=int, default=200)
    ap.add_argument("--scenario-test-size", type=int, default=300)
    ap.add_argument("--n-silos", type=int, default=5)
    ap.add_argument("--samples-per-silo", type=int, default=400)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    apply_process_defaults()

    t0 = time.perf_counter()
    art = build_world(WorldSpec(seed=args.world_seed))
    build_seconds = time.perf_counter() - t0
    build = json.loads((art.vision_path.parent / "build.json").read_text())
    runs = []
    if args.jobs > 1 and len(args.seeds) > 1:  # one process per seed, each on one torch thread
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            for run in pool.map(central_run, [art] * len(args.seeds), args.seeds, [args] * len(args.seeds)):
                runs.append(run)
                print(json.dumps(run), flush=True)
    else:
        for seed in args.seeds:
            runs.append(central_run(art, seed, args))
            print(json.dumps(runs[-1]), flush=True)
    keys = ["nll_cut_vs_no_image", "heldout_nll_image", "heldout_nll_no_image_placeholders",
            "heldout_nll_no_image_no_prefix", "mc_accuracy", "presence_accuracy", "presence_f1",
            "presence_yes_rate", "colour_accuracy", "shape_accuracy", "count_accuracy", "train_seconds"]
    summary = {k: _mean_std([r[k] for r in runs]) for k in keys} if runs else {}
    scenarios = []
    if not args.no_scenarios:
        for name in args.scenarios:
            for seed in args.scenario_seeds:
                scenarios.append(scenario_run(art, name, seed, args))
                print(json.dumps({k: scenarios[-1][k] for k in ("scenario", "seed", "centralized", "best_silo_alone")}),
                      flush=True)
    result = {"world_dir": str(art.vision_path.parent), "spec": json.loads(art.spec.to_json()), "build": build,
              "build_or_load_seconds": build_seconds, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                               for k, v in vars(args).items()},
              "runs": runs, "summary": summary, "scenarios": scenarios}
    write_reports(result, args.out)
    figures = {k: summary[k][0] for k in ("nll_cut_vs_no_image", "mc_accuracy", "presence_f1") if k in summary}
    for r in scenarios:
        figures[f"{r['scenario']}_s{r['seed']}_central_nll"] = r["centralized"]["nll"]
        figures[f"{r['scenario']}_s{r['seed']}_best_alone_nll"] = r["best_silo_alone"]["nll"]
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
