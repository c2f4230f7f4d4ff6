"""What an experiment family is to the one runner (fedalign.lab.jobs) and the one table writer
(fedalign.lab.tables): its jobs, the rows a job still lacks, how a row runs, and how its run lines
become tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["Family", "ints"]


@dataclass(frozen=True)
class Family:
    """One family of results/: run lines in ``results/<runs>/<job>-s<seed>.jsonl``, tables ``outputs``.

    ``jobs(options)`` lists the (job, seed) pairs in the order to run them; a worker process runs one.
    ``pending(job, seed, options, lines)`` returns {row label: row} of the rows the job's run lines do not
    hold yet (a row is identified by what it runs), so a killed run resumes. ``build(job, seed, options)``
    makes what the job's rows share (the problem: data and model), built once, when the first row needs
    it; ``run(problem, row, job, seed, options)`` runs one row (``problem()`` returns the shared one) and
    returns its run line. ``render(lines, runs, out)`` writes the family's tables from its run lines.
    """

    name: str
    summary: str
    runs: str
    outputs: tuple[str, ...]
    options: Mapping[str, Any]
    jobs: Callable[[dict], list[tuple[str, int]]]
    pending: Callable[[str, int, dict, list[dict]], dict[str, Any]]
    build: Callable[[str, int, dict], Any]
    run: Callable[[Callable[[], Any], Any, str, int, dict], dict]
    render: Callable[[list[dict], Path, Path], None]


def ints(text) -> list[int]:
    """``"0,1,2"`` (or one int) -> ``[0, 1, 2]``."""
    return [int(s) for s in str(text).split(",") if s.strip()]
