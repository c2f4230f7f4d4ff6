"""Fed-CMP results table: 4 scenarios × strategies (+ ablations, ranks, references) × seeds.

    python scripts/results.py run [--jobs 2]   # workers, one (scenario, seed) each; resumable
    python scripts/results.py table            # results/fedcmp_results.{md,csv} and friends

``run`` appends one JSON line per finished configuration to results/fedcmp_runs/<job>.jsonl and
skips configurations already there, so a killed run resumes where it stopped. Every process
uses one torch thread. ``table`` reads those lines and writes mean ± std over seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from fedalign.host.process import apply_process_defaults  # noqa: E402

apply_process_defaults()

import typer  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__)

from fedalign.lab.experiments import SCENARIOS, Setup  # noqa: E402
from fedalign.lab.jobs import run_jobs, run_worker  # noqa: E402
from fedalign.lab.tables import write_tables  # noqa: E402

RESULTS = ROOT / "results"
RUNS = RESULTS / "fedcmp_runs"


@app.command()
def worker(scenario: str, seed: int, dp: bool = False, silos: int = Setup.silos, rounds: int = Setup.rounds,
           samples_per_round: int = Setup.samples_per_round, world: str = "default", out: Path = RUNS,
           only: str = "all") -> None:
    """Run every missing configuration of one (scenario, seed) in this process (shared data and model)."""
    run_worker(scenario, seed, dp, silos, rounds, samples_per_round, world, out, only)


@app.command()
def run(jobs: int = typer.Option(2, help="worker processes at once (≤ 2 on this machine)"),
        scenarios: str = ",".join(SCENARIOS), seeds: str = "0,1,2", dp_scenario: str = "label",
        silos: int = Setup.silos, rounds: int = Setup.rounds, samples_per_round: int = Setup.samples_per_round,
        world: str = typer.Option("default", help="default | tiny (a dry run of the pipeline)"),
        out: Path = RUNS, tables: Path = RESULTS,
        only: str = typer.Option("all", help="all | core (the verdict rows first, for every seed)")) -> None:
    """All jobs, seed-major (every scenario's seed 0 first), ``jobs`` at a time; then the tables."""
    run_jobs([sys.executable, __file__, "worker"], jobs, scenarios, seeds, dp_scenario, silos, rounds,
             samples_per_round, world, out, only)
    table(runs=out, out=tables)


@app.command()
def table(runs: Path = RUNS, out: Path = RESULTS) -> None:
    """Write results/fedcmp_results.{md,csv} from the run lines."""
    write_tables(runs, out)


if __name__ == "__main__":
    app()


