"""The "world-check" family: does alignment mean something on the embedded world, and do its scenarios
separate methods? results/world_check.{json,md} (and world_scenarios.{json,md}).

Job "central" (one per seed) trains the projector centrally with the project's own trainer for a fixed
step budget and measures by the frozen LM's likelihood: held-out caption NLL with the image against the
SAME LM without it (prefix replaced by placeholders, and prefix left out; the lower of the two is the
baseline), 4-way multiple-choice accuracy, presence accuracy/F1/yes-rate and attribute probes. A job
named after a world scenario (``--set scenarios=iid,unreliable``) trains centrally against every silo
alone (same step budget, same clean test split), and for the unreliable scenario centrally without the
unreliable silos.

    fedalign-lab experiment run world-check                      # 3 seeds, 2 at a time
    fedalign-lab experiment run world-check --set seeds= --set scenarios=iid,unreliable
    fedalign-lab experiment table world-check
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from fedalign.lab.experiments.family import Family, ints

__all__ = ["train_projector", "central_run", "scenario_run", "FAMILY"]

OPTIONS = {"seeds": "0,1,2", "world": "default", "world_seed": 0, "projector": "mlp2x_gelu", "steps": 3000,
           "lr": 3e-3, "batch_size": 32, "train_size": 16000, "test_size": 400, "scenarios": "", "scenario_seeds": "0",
           "scenario_steps": 200, "scenario_test_size": 300, "n_silos": 5, "samples_per_silo": 400}
# what a job runs, by kind: a line whose args agree on these (the world "default" where unnamed) is done
WHAT = {"central": ("world", "world_seed", "projector", "steps", "lr", "batch_size", "train_size", "test_size"),
        "scenario": ("world", "world_seed", "projector", "scenario_steps", "lr", "batch_size", "n_silos",
                     "samples_per_silo", "scenario_test_size")}
KEYS = ["nll_cut_vs_no_image", "heldout_nll_image", "heldout_nll_no_image_placeholders",
        "heldout_nll_no_image_no_prefix", "mc_accuracy", "presence_accuracy", "presence_f1",
        "presence_yes_rate", "colour_accuracy", "shape_accuracy", "count_accuracy", "train_seconds"]


def _kind(job: str) -> str:
    return "central" if job == "central" else "scenario"


def _what(kind: str, args: dict) -> dict:
    return {k: args.get(k, "default" if k == "world" else None) for k in WHAT[kind]}


def _jobs(o: dict) -> list[tuple[str, int]]:
    from fedalign.protocol.errors import ConfigError
    from fedalign.world import SCENARIOS

    names = [x for x in o["scenarios"].split(",") if x]
    if bad := [x for x in names if x not in SCENARIOS]:
        raise ConfigError(f"scenarios: unknown {bad}; expected some of {list(SCENARIOS)}")
    return [("central", s) for s in ints(o["seeds"])] + [(x, s) for x in names for s in ints(o["scenario_seeds"])]


def _pending(job: str, seed: int, o: dict, lines: list[dict]) -> dict[str, str]:
    kind = _kind(job)
    done = any(_what(kind, ln["args"]) == _what(kind, o) for ln in lines)
    return {} if done else {job: job}


def _build(job: str, seed: int, o: dict):
    from dataclasses import replace

    from fedalign.world import TINY_SPEC, WorldSpec, build_world

    t0 = time.perf_counter()
    art = build_world(replace(TINY_SPEC if o["world"] == "tiny" else WorldSpec(), seed=o["world_seed"]))
    return art, time.perf_counter() - t0


def _run(problem, job: str, _job: str, seed: int, o: dict) -> dict:
    art, seconds = problem()
    args = SimpleNamespace(**o)
    run = central_run(art, seed, args) if job == "central" else scenario_run(art, job, seed, args)
    return {"kind": _kind(job), "seed": seed, "world_dir": str(art.vision_path.parent),
            "spec": json.loads(art.spec.to_json()),
            "build": json.loads((art.vision_path.parent / "build.json").read_text()),
            "build_or_load_seconds": seconds, "args": dict(o), "run": run}


def train_projector(model, samples, *, steps: int, seed: int, lr: float, batch_size: int,
                    phases: int = 3, decay: float = 0.3):
    """Train the projector on ``samples`` for ``steps`` steps in ``phases`` rounds of the
    project's trainer, the learning rate multiplied by ``decay`` after each; returns the
    parameters (the model is left holding them)."""
    import torch

    from fedalign.silo.sources import world_records
    from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard, train_rounds

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
    import torch

    from fedalign.silo.model import load_alignment_model

    return load_alignment_model(str(art.vision_path), str(art.lm_path), projector=projector, device="cpu",
                                generator=torch.Generator().manual_seed(seed))


def central_run(art, seed: int, args) -> dict:
    import numpy as np

    from fedalign.silo.evaluate import evaluate, prepare_eval, remove_image
    from fedalign.silo.sources import world_records
    from fedalign.world import make_eval_items, make_samples, text_only_prompt

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
    from fedalign.silo.evaluate import evaluate, prepare_eval
    from fedalign.silo.sources import world_records
    from fedalign.world import make_eval_items, make_scenario, skew_report, text_only_prompt

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


def _np_mean_std(values) -> tuple[float, float]:
    """Mean and sample std as numpy computes them: the committed world_check.json's summary was, and
    fedalign.lab.tables.mean_std (statistics) differs from it in the last digit."""
    import numpy as np

    a = np.asarray([v for v in values if v is not None], float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _head(lines: list[dict]) -> dict:
    """The report's head (world, build, arguments) from its first run line, with the seeds run."""
    first = lines[0]
    args = {**first["args"], "seeds": [ln["seed"] for ln in lines]}
    return {"world_dir": first["world_dir"], "spec": first["spec"], "build": first["build"],
            "build_or_load_seconds": first["build_or_load_seconds"], "args": args}


def render(lines: list[dict], _runs: Path, out: Path) -> None:
    """world_check.{json,md} from the central runs, world_scenarios.{json,md} from the scenario runs."""
    from fedalign.world import SCENARIOS

    central = sorted((ln for ln in lines if ln["kind"] == "central"), key=lambda ln: ln["seed"])
    if central:
        runs = [ln["run"] for ln in central]
        result = {**_head(central), "runs": runs, "summary": {k: _np_mean_std([r[k] for r in runs]) for k in KEYS}}
        (out / "world_check.json").write_text(json.dumps(result, indent=1))
        (out / "world_check.md").write_text(_central_md(result))
    scen = sorted((ln for ln in lines if ln["kind"] == "scenario"),
                  key=lambda ln: (list(SCENARIOS).index(ln["run"]["scenario"]), ln["seed"]))
    if scen:
        result = {**_head(scen), "scenarios": [ln["run"] for ln in scen]}
        (out / "world_scenarios.json").write_text(json.dumps(result, indent=1))
        (out / "world_scenarios.md").write_text(_scenarios_md(result))


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


FAMILY = Family("world-check", "the embedded world's central and per-silo checks", "world_check_runs",
                ("world_check.json", "world_check.md", "world_scenarios.json", "world_scenarios.md"), OPTIONS, _jobs,
                _pending, _build, _run, render)
