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
    # every export carries its model card (README.md, issue 26 item 8): the writer's final ledger head and
    # the command that verifies it; the aggregator cannot know the silos' record counts (it learns only sums)
    from fedalign.protocol.ledger import read_ledger

    for d, ledger, cmd in (("aggregator-out", "ledger.jsonl", "aggregator audit verify --config"),
                           ("hospital-a-out", "state/ledger.jsonl", "silo audit verify --config")):
        card = (out / d / "README.md").read_text()
        last = read_ledger(out / d / ledger)[-1]
        assert card.startswith("---\nlibrary_name: fedalign\n"), card[:200]
        for needle in ("mlp2x_gelu", "secagg", "fedcmp", last.digest, str(last.seq), cmd):
            assert needle in card, (d, needle)
    agg_card = (out / "aggregator-out" / "README.md").read_text()
    assert "not known to the aggregator" in agg_card and all(f"hospital-{x}" in agg_card for x in "abc")
