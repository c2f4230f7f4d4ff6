"""`make demo`'s script end to end at a small size: the tiny world, 2 rounds, 512 records per silo.

Before this test nothing ran the quickstart, and a renamed file broke `make demo` unnoticed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart" / "run.py"), "--world", "tiny",
                        "--rounds", "2", "--shard-size", "512", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    return out, p


@pytest.mark.slow
def test_the_quickstart_runs_and_reports_against_the_no_image_baseline(quickstart):
    out, p = quickstart
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
    from fedalign.compliance.entries import read_ledger

    for d, ledger, cmd in (("aggregator-out", "ledger.jsonl", "aggregator audit verify --config"),
                           ("hospital-a-out", "state/ledger.jsonl", "silo audit verify --config")):
        card = (out / d / "README.md").read_text()
        last = read_ledger(out / d / ledger)[-1]
        assert card.startswith("---\nlibrary_name: fedalign\n"), card[:200]
        for needle in ("mlp2x_gelu", "secagg", "fedcmp", last.digest, str(last.seq), cmd):
            assert needle in card, (d, needle)
    agg_card = (out / "aggregator-out" / "README.md").read_text()
    assert "not known to the aggregator" in agg_card and all(f"hospital-{x}" in agg_card for x in "abc")
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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_the_html_report_shows_in_chromium_which_checks_ran_at_the_top(quickstart, tmp_path):
    """Issue 26: the HTML report of the quickstart's hospital-a, rendered by headless Chromium, opens
    with the table of checks; with --config every check ran and passed, the witnessed tail included."""
    from typer.testing import CliRunner

    from fedalign.silo.cli import app

    out, p = quickstart
    assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
    html = tmp_path / "report.html"
    cwd = os.getcwd()
    os.chdir(out)
    try:
        r = CliRunner().invoke(app, ["audit", "report", "--config", "hospital-a.toml", "--html", str(html)])
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                              "--disable-component-update", "--disable-sync", "--no-first-run",
                              f"--user-data-dir={profile}", "--dump-dom", html.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    body = dom[dom.index("<body"):]
    first = body[body.index("<section"):]
    assert first.startswith('<section id="checks">'), first[:200]  # the first thing after the title
    table = first[:first.index("</section>")]
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=\"(\w+)\">([^<]+)</td>", table)
    assert [(c, o) for c, _, o in rows] == [("hash chain", "ok"), ("signatures", "ok"), ("witnessed heads", "ok"),
                                            ("tail", "ok"), ("witnessed tail", "ok")], rows
