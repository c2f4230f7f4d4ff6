"""`make demo`'s script end to end at a small size: the tiny world, 2 rounds, 512 records per silo.

Before this test nothing ran the quickstart, and a renamed file broke `make demo` unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_quickstart_runs_and_reports_against_the_no_image_baseline(tmp_path):
    out = tmp_path / "qs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart" / "run.py"), "--world", "tiny",
                        "--rounds", "2", "--shard-size", "512", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-4000:]
    assert "MATCH" in text and "MISMATCH" not in text
    assert "no image" in text and "held-out caption NLL" in text  # the baseline beside the result
    for f in ("aggregator-out/final_projector.safetensors", "hospital-a-out/mm_projector.safetensors",
              "curves.png", "aggregator-out/ledger.jsonl", "hospital-c-out/state/ledger.jsonl"):
        assert (out / f).is_file(), f
    assert "epsilon" in text and "7.9" in text  # ε spent per silo, from the budget-derived plan
    _every_single_deletion_is_refused(out)


def _every_single_deletion_is_refused(out: Path) -> None:
    """Issue 26: `audit verify --config` finds the roster's keys and the peer's ledger ([audit]); the
    quickstart's ledgers, intact, verify; with the first, a middle, the last or the last two entries
    deleted they are refused (on 3c16410 cutting the last two entries of a silo's ledger, its final
    release record and run_end, passed verify with the silo's key and the aggregator's ledger)."""
    from typer.testing import CliRunner

    from fedalign.aggregator.cli import build_app
    from fedalign.silo.cli import app as silo_app

    cases = {"hospital-a-out/state/ledger.jsonl": (silo_app, "hospital-a.toml"),
             "aggregator-out/ledger.jsonl": (build_app(), "aggregator.toml")}
    cwd = os.getcwd()
    os.chdir(out)  # the configs name their files relative to themselves, the CLI is run where they are
    try:
        for rel, (app, cfg) in cases.items():
            path = out / rel
            data = path.read_bytes()
            lines = data.splitlines(keepends=True)
            ok = CliRunner().invoke(app, ["audit", "verify", "--config", cfg])
            assert ok.exit_code == 0 and "signatures checked" in ok.output and "witnessed" in ok.output, ok.output
            for name, keep in {"first": lines[1:], "middle": lines[:len(lines) // 2] + lines[len(lines) // 2 + 1:],
                               "last": lines[:-1], "last two": lines[:-2]}.items():
                path.write_bytes(b"".join(keep))
                try:
                    r = CliRunner().invoke(app, ["audit", "verify", "--config", cfg])
                finally:
                    path.write_bytes(data)
                assert r.exit_code == 11, f"{rel} with the {name} entry deleted: {r.output}"
    finally:
        os.chdir(cwd)
