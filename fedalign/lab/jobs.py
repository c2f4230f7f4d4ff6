"""The one experiment runner: any family of fedalign.lab.experiments, as worker processes that run one
(job, seed) each, ``jobs`` at a time. A worker appends one JSON line per finished row to
results/<family's runs>/<job>-s<seed>.jsonl and runs only the rows its lines do not hold yet (a row is
identified by what it runs), so a killed run resumes where it stopped. Every process uses one torch
thread."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fedalign.lab.experiments import Family, family
from fedalign.lab.tables import RESULTS, read_jsonl, write_table
from fedalign.protocol.errors import ConfigError

__all__ = ["run_family", "run_worker", "family_options"]


def family_options(fam: Family, given: dict) -> dict:
    """The family's run options: its defaults, ``given`` over them; an unknown key is one ConfigError."""
    unknown = sorted(set(given) - set(fam.options))
    if unknown:
        raise ConfigError(f"experiment {fam.name}: unknown option(s) {unknown}; expected some of "
                          f"{', '.join(fam.options)}")
    return {**fam.options, **given}


def run_worker(name: str, job: str, seed: int, options: dict, runs: Path, rows: list[str] = ()) -> int:
    """Run every missing row of one (job, seed) in this process (they share one problem); returns how
    many rows failed (a failed row is logged, not written, and the others still run)."""
    from fedalign.host.process import apply_process_defaults

    apply_process_defaults()
    fam = family(name)
    tag = f"[{name} {job}-s{seed}]"
    path = runs / f"{job}-s{seed}.jsonl"
    todo = fam.pending(job, seed, options, read_jsonl(path))
    if rows:
        todo = {k: v for k, v in todo.items() if k in rows}
    if not todo:
        return 0
    runs.mkdir(parents=True, exist_ok=True)
    shared: list = []

    def problem():
        if not shared:
            t0 = time.perf_counter()
            shared.append(fam.build(job, seed, options))
            print(f"{tag} problem ready in {time.perf_counter() - t0:.1f}s", flush=True)
        return shared[0]

    failed = 0
    for label, row in todo.items():
        t0 = time.perf_counter()
        try:
            line = fam.run(problem, row, job, seed, options)
        except ConfigError:
            raise
        except Exception as exc:  # one failed row must not lose the others
            print(f"{tag} {label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            failed += 1
            continue
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        nll = f"nll {line['nll']:.4f} " if isinstance(line.get("nll"), float) else ""
        print(f"{tag} {label}: {nll}({time.perf_counter() - t0:.1f}s)", flush=True)
    return failed


def _prebuild_world(world: str) -> None:
    """Build (or load) the embedded world once, before the workers race to."""
    from fedalign.world.build import build_world
    from fedalign.world.spec import TINY_SPEC

    t0 = time.time()
    art = build_world(TINY_SPEC if world == "tiny" else None)
    how = "built" if art.built else "shipped" if art.shipped else "cached"
    print(f"world {art.vision_path.parent.name} ready ({how}, {time.time() - t0:.0f}s)", flush=True)


def run_family(name: str, given: dict | None = None, *, jobs: int = 2, rows: list[str] = (), runs: Path | None = None,
               out: Path | None = None) -> int:
    """Every (job, seed) of family ``name`` in the family's order, ``jobs`` worker processes at a time (0: in
    this process, one after the other); then its tables from every line in ``runs``. Returns the number of
    jobs that failed (the tables are written either way)."""
    fam = family(name)
    options = family_options(fam, given or {})
    queue = fam.jobs(options)  # a bad option is refused here, before any work
    known = {label for job, seed in queue for label in fam.pending(job, seed, options, [])}
    if unknown := [r for r in rows if r not in known]:
        raise ConfigError(f"--row: {unknown} is no row of {name} here; its rows: {sorted(known)}")
    runs = runs if runs is not None else RESULTS / fam.runs
    if "world" in options:
        _prebuild_world(options["world"])
    failed = 0
    if jobs <= 0:
        failed = sum(run_worker(name, job, seed, options, runs, rows) > 0 for job, seed in queue)
    else:
        running: list[tuple[str, subprocess.Popen]] = []
        t0 = time.time()
        while queue or running:
            while queue and len(running) < jobs:
                job, seed = queue.pop(0)
                cmd = [sys.executable, "-m", "fedalign.lab.cli", "experiment", "worker", name, job, str(seed),
                       "--options", json.dumps(options), "--runs", str(runs), *[a for r in rows for a in ("--row", r)]]
                running.append((f"{job}-s{seed}", subprocess.Popen(cmd)))
            time.sleep(0.2)
            for tag, p in [x for x in running if x[1].poll() is not None]:
                running.remove((tag, p))
                failed += p.returncode != 0
                print(f"job {tag} exited {p.returncode} at {time.time() - t0:.0f}s", flush=True)
    write_table(name, runs, out)
    return failed
