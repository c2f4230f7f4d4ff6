"""The one table writer: :func:`write_table` reads a family's run lines and writes its tables (md, csv,
png) through the family's own render function. The helpers every render shares live here: loading run
lines, mean ± std over seeds, paired per-seed differences, a CSV file."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

__all__ = ["RESULTS", "write_table", "read_jsonl", "load_runs", "mean_std", "fmt_mean_std", "fmt_ms", "paired", "write_csv"]

RESULTS = Path("results")  # relative to the working directory (the repository root)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of one file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_runs(runs: Path) -> list[dict]:
    """Every run line of ``runs/*.jsonl`` in file-name order (files named ``_*`` are a run's scratch)."""
    return [row for path in sorted(runs.glob("*.jsonl")) if not path.name.startswith("_") for row in read_jsonl(path)]


def mean_std(vals) -> tuple[float, float, int]:
    """(mean, sample std, n) over the finite numbers in ``vals`` (std 0 for one, NaN for none)."""
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def fmt_mean_std(m: float, s: float, digits: int = 4, empty: str = "–") -> str:
    """``"0.4901 ± 0.0123"``; ``empty`` for a NaN mean (nothing measured)."""
    return empty if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def fmt_ms(vals, digits: int = 4, empty: str = "–") -> str:
    """:func:`fmt_mean_std` over ``vals``, ``empty`` when there is none."""
    m, s, _ = mean_std(vals)
    return fmt_mean_std(m, s, digits, empty)


def paired(a: dict, b: dict) -> list[tuple[float, float]]:
    """(a's value, b's value) for every seed both ran (same data and initialisation), in seed order;
    ``a`` and ``b`` map seed -> value (None: not measured)."""
    return [(a[s], b[s]) for s in sorted(a) if s in b and a[s] is not None and b[s] is not None]


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV, the first row's keys as the header (nothing written for no rows)."""
    if rows:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def write_table(name: str, runs: Path | None = None, out: Path | None = None) -> list[Path]:
    """Write family ``name``'s tables into ``out`` (default results/) from its run lines (default
    results/<family's runs>/); returns the files written."""
    from fedalign.lab.experiments import family
    from fedalign.protocol.errors import ConfigError

    fam = family(name)
    runs = runs if runs is not None else RESULTS / fam.runs
    out = out if out is not None else RESULTS
    if not runs.is_dir():
        raise ConfigError(f"experiment table {name}: no run lines folder {runs}")
    out.mkdir(parents=True, exist_ok=True)
    before = {f: (out / f).stat().st_mtime_ns for f in fam.outputs if (out / f).exists()}
    fam.render(load_runs(runs), runs, out)
    written = [out / f for f in fam.outputs if (out / f).exists() and (out / f).stat().st_mtime_ns != before.get(f)]
    print(f"wrote {', '.join(map(str, written))}")
    return written
