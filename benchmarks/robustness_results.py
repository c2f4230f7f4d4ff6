"""Writes one benchmark's section of results/robustness.md (each robustness benchmark owns one).

A section lies between ``<!-- name -->`` and ``<!-- /name -->``; rewriting it leaves the other
sections as they are, so each benchmark's figures come from its own last run.
"""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "robustness.md"
HEADER = """# Robustness (issue #10): measured figures

Each section below is written by the benchmark named in it, from one run, with the command it
states; nothing here is edited by hand. Machine: 2 CPU cores shared with other jobs, so times
are noisy; counts are exact.
"""


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=RESULTS.parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_section(name: str, title: str, command: str, body: str) -> Path:
    """Replace (or append) section ``name`` of results/robustness.md."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"<!-- {name} -->\n## {title}\n\n`{command}` (commit {_commit()}, {when}, "
            f"Python {platform.python_version()})\n\n{body.strip()}\n<!-- /{name} -->\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    doc = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    pat = re.compile(rf"<!-- {re.escape(name)} -->\n.*?<!-- /{re.escape(name)} -->\n", re.S)
    doc = pat.sub(lambda m: text, doc) if pat.search(doc) else doc.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(doc, encoding="utf-8")
    return RESULTS
