"""Whole-run leakage (issue 25): random dropout schedules against what a round reveals.

Runs ``--runs`` federations in process (fedalign/lab/leakage.py: the real Coordinator, real
SiloParticipants in threads, SecAgg, the wire format), each with a random schedule: up to two of
five silos die after training or after any secure-sum message of phase 0 or 1 of either of two
rounds (every phase boundary), and in half of the runs the aggregator also leaves one live silo
out of one phase (a declared dropout). For every run the capturing coordinator keeps every sum
it obtained with the public values it showed each silo, and the harness computes exactly which
linear functionals of a single silo's input those sums determine (0: only sums over several
silos; 1: the whole update). Counts committed and abandoned rounds.

Writes its section of results/robustness.md and ends with one JSON line. Default run: about
7 minutes on 2 shared cores.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_leakage.py [--runs 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedalign.host.process import apply_process_defaults

apply_process_defaults()

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedalign.lab.leakage import sweep  # noqa: E402
from robustness_results import write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.time()
    res = sweep(a.runs, a.seed)
    rows = res.pop("rows")
    leaky = sum(r["worst"] > 1e-6 for r in rows)
    deaths = sum(len(r["schedule"]) for r in rows)
    seconds = time.time() - t0
    body = f"""
{a.runs} runs of 5 silos × 2 rounds of Fed-CMP (rank 2, reliability off so the equations stay linear),
{deaths} silo deaths at random points (after training, or after any of the 5 secure-sum messages of
phase 0 or 1), declared dropouts in about half the runs. The aggregator obtained {res['sums']} sums;
{res['committed_rounds']} rounds committed, {res['abandoned_rounds']} attempts abandoned (a set that shrank
after phase 0, a refused set, a sum below its threshold). Largest fraction of any single silo's input
that all captured sums of its run determine: **{res['worst']:.3g}** ({leaky} of {a.runs} runs above 1e-6).
The same sweep on 3c16410 (before the round binding): see the closing note of issue 25 and
SECURITY.md, "What a round reveals". {seconds:.0f} s.
"""
    write_section("leakage", "Whole-run leakage over random dropout schedules (benchmarks/bench_leakage.py)",
                  f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_leakage.py --runs {a.runs} --seed {a.seed}", body)
    print(body.strip())
    print(json.dumps({"bench": "leakage", **res, "leaky_runs": leaky, "deaths": deaths, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
