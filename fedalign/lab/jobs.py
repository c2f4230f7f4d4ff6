"""The experiment runner: worker processes, one (scenario, seed) each, appending one JSON line per
finished configuration to results/fedcmp_runs/<job>.jsonl and skipping lines already there, so a
killed run resumes where it stopped. Every process uses one torch thread."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from fedalign.lab.experiments import SCENARIOS, Config, Setup, configs_for

__all__ = ["RESULTS", "RUNS", "run_config", "run_worker", "run_jobs"]

RESULTS = Path("results")  # relative to the working directory; scripts/results.py passes its own
RUNS = RESULTS / "fedcmp_runs"


def _job_name(scenario: str, seed: int, dp: bool) -> str:
    return f"{scenario}{'-dp' if dp else ''}-s{seed}"


def _done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["label"] for line in path.read_text().splitlines() if line.strip()}


def run_config(problem, cfg: Config, setup: Setup, seed: int) -> dict:
    from fedalign.lab.cli import build_strategy
    from fedalign.lab.runner import centralized, local_only, simulate_problem
    from fedalign.lab.sums import PLAIN_LABEL, plain_sum_insecure

    t0 = time.perf_counter()
    if cfg.strategy == "centralized":
        final = centralized(problem, setup.rounds, lr=cfg.options.get("lr")).final
    elif cfg.strategy == "local-only":
        final = local_only(problem, setup.rounds).final
    else:
        strat = build_strategy(cfg.strategy, dp=cfg.dp, seed=seed, **cfg.options)
        keep = [k for k in range(problem.n_silos) if k not in problem.unreliable] if cfg.oracle else None
        res = simulate_problem(problem, strat, setup.rounds, secure_sum=plain_sum_insecure,
                               secure_sum_label=PLAIN_LABEL, silos=keep, eval_every=setup.eval_every)
        final = {**res.final, "curve": [{k: r.get(k) for k in ("round", "nll", "mc_accuracy", "presence_f1")}
                                       for r in res.records if "nll" in r]}
    return {**final, "label": cfg.label, "group": cfg.group, "seconds": time.perf_counter() - t0}


def run_worker(scenario: str, seed: int, dp: bool = False, silos: int = Setup.silos, rounds: int = Setup.rounds,
           samples_per_round: int = Setup.samples_per_round, world: str = "default", out: Path | None = None,
           only: str = "all") -> None:
    """Run every missing configuration of one (scenario, seed) in this process (shared data and model)."""
    from fedalign.host.process import apply_process_defaults

    apply_process_defaults()
    from fedalign.lab.scenarios import ProblemOptions, build_problem

    setup = Setup(silos=silos, rounds=rounds, samples_per_round=samples_per_round)
    out = out if out is not None else RUNS
    path = out / f"{_job_name(scenario, seed, dp)}.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in configs_for(scenario, dp, only) if c.label not in _done(path)]
    if not todo:
        return
    dp_opts = dict(noise_multiplier=setup.dp_noise, max_grad_norm=setup.dp_clip, epsilon=setup.dp_epsilon,
                   delta=setup.dp_delta) if dp else None
    t0 = time.perf_counter()
    extra = {"batch_size": setup.batch_size, "lr": setup.lr, "test_size": setup.test_size, "world": world}
    problem = build_problem(scenario, ProblemOptions(n_silos=silos, rounds=rounds, seed=seed, dp=dp_opts,
                                                     samples_per_round=setup.samples_per_round, extra=extra))
    print(f"[{_job_name(scenario, seed, dp)}] problem ready in {time.perf_counter() - t0:.1f}s", flush=True)
    for cfg in todo:
        try:
            row = run_config(problem, cfg, setup, seed)
        except Exception as exc:  # one failed row must not lose the others; it is logged, not written
            print(f"[{_job_name(scenario, seed, dp)}] {cfg.label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        row.update(scenario=scenario, seed=seed, dp=dp, silos=silos, rounds=rounds,
                   world=getattr(problem, "world_id", None), setup=setup.__dict__ | {"seeds": None})
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{_job_name(scenario, seed, dp)}] {cfg.label}: nll={row.get('nll', float('nan')):.4f} "
              f"({row['seconds']:.1f}s)", flush=True)


def run_jobs(worker_cmd: list[str], jobs: int = 2,
        scenarios: str = ",".join(SCENARIOS), seeds: str = "0,1,2", dp_scenario: str = "label",
        silos: int = Setup.silos, rounds: int = Setup.rounds, samples_per_round: int = Setup.samples_per_round,
        world: str = "default", out: Path | None = None, only: str = "all") -> None:
    """All jobs, seed-major (every scenario's seed 0 first), ``jobs`` worker processes at a time.

    ``worker_cmd`` starts one worker (e.g. ``[python, scripts/results.py, "worker"]``); each gets
    ``scenario seed`` and the size options.
    """
    out = out if out is not None else RUNS
    seed_list = [int(s) for s in seeds.split(",") if s]
    from fedalign.world.build import build_world  # build the world once, before the workers race to

    t_build = time.time()
    from fedalign.world.spec import TINY_SPEC

    art = build_world(TINY_SPEC if world == "tiny" else None)
    print(f"world {art.vision_path.parent.name} ready ({'built' if art.built else 'cached'}, "
          f"{time.time() - t_build:.0f}s)", flush=True)
    queue = []
    for s in seed_list:  # seed-major, so a run cut short still has every scenario's first seeds
        queue += [(sc, s, False) for sc in scenarios.split(",") if sc]
        if dp_scenario:
            queue.append((dp_scenario, s, True))
    running: list[subprocess.Popen] = []
    t0 = time.time()
    while queue or running:
        while queue and len(running) < jobs:
            sc, s, dp = queue.pop(0)
            cmd = [*worker_cmd, sc, str(s), "--silos", str(silos), "--rounds", str(rounds),
                   "--samples-per-round", str(samples_per_round), "--world", world, "--out", str(out),
                   "--only", only]
            cmd += ["--dp"] if dp else []
            running.append(subprocess.Popen(cmd))
        time.sleep(2)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            print(f"job {' '.join(p.args[len(worker_cmd):len(worker_cmd) + 2])} exited {p.returncode} at {time.time() - t0:.0f}s", flush=True)
