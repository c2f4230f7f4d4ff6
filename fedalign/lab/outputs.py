"""What a simulation writes to --out: metrics.jsonl (one record per round), final.json, curves.png."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["JsonlWriter", "write_final", "plot_curves", "plot_reliability", "CURVE_METRICS"]

CURVE_METRICS = ("nll", "mc_accuracy", "presence_f1", "train_loss")


def _clean(obj):
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a killed run keeps its finished rounds.
    Nothing is written before the first record (a run refused at its inputs leaves no file)."""

    def __init__(self, path: str | os.PathLike, extra: Mapping | None = None) -> None:
        self.path = Path(path)
        self.extra = dict(extra or {})
        self._started = False

    def __call__(self, record: Mapping) -> None:
        if not self._started:  # a fresh file per run
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
            self._started = True
        with self.path.open("a") as f:
            f.write(json.dumps(_clean({**self.extra, **record}), sort_keys=True) + "\n")


def write_final(path: str | os.PathLike, final: Mapping) -> None:
    """final.json, written atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(dict(final)), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def plot_curves(curves: Mapping[str, Sequence[Mapping]], path: str | os.PathLike, title: str = "") -> None:
    """One panel per metric present, one line per label (records with ``round`` and metric keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in CURVE_METRICS if any(m in r for recs in curves.values() for r in recs)]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.2 * max(1, len(metrics)), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, recs in curves.items():
            pts = [(r["round"], r[metric]) for r in recs if r.get(metric) is not None and math.isfinite(r[metric])]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=2.5, label=label)
        ax.set_xlabel("round")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _save(fig, path, title)


def plot_reliability(curves: Mapping[str, Sequence[Mapping]], path: str | os.PathLike,
                     unreliable: Mapping[str, Sequence[int]] | None = None, title: str = "") -> bool:
    """Each silo's own ρ per round (records' ``rho``: silo -> ρ), one panel per label; silos the
    experimenter knows to be unreliable in red. Returns False (and writes nothing) without ρ."""
    panels = {label: [r for r in recs if isinstance(r.get("rho"), Mapping)] for label, recs in curves.items()}
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, sharey=True)
    for ax, (label, recs) in zip(axes[0], panels.items()):
        bad = {str(k) for k in (unreliable or {}).get(label, ())}
        for silo in sorted({s for r in recs for s in r["rho"]}, key=lambda s: (len(s), s)):
            pts = [(r["round"], r["rho"][silo]) for r in recs if silo in r["rho"]]
            ax.plot(*zip(*pts), marker="o", markersize=2.5, color="tab:red" if silo in bad else None,
                    ls="-" if silo in bad else "--", label=f"silo {silo}" + (" (unreliable)" if silo in bad else ""))
        ax.set_xlabel("round")
        ax.set_title(f"ρ, {label}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    _save(fig, path, title)
    return True


def _save(fig, path: str | os.PathLike, title: str) -> None:
    """Title, lay out, write (folders made) and close a figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
