"""README.md's "Running a real federation" is what examples/federation/run.sh does, and it works:
keys, roster, model cards, init, serve and three silos over loopback (embedded tiny world)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "federation" / "run.sh"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Running a real federation"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [" ".join(line.split("#")[0].split()) for line in block.splitlines() if line.split("#")[0].strip()]


def test_the_script_runs_the_readme_commands_verbatim():
    script = [" ".join(line.split()) for line in SCRIPT.read_text().splitlines()]
    cmds = _readme_commands()
    assert any(c.startswith("aggregator init") for c in cmds) and any(c.startswith("silo describe") for c in cmds)
    for c in cmds:  # each silo's command is run for hospital-a, -b and -c through the loop variable
        assert any(c in line or c.replace("hospital-a", "$s") in line for line in script), f"not in run.sh: {c}"


@pytest.mark.slow
def test_the_federation_example_runs(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FEDALIGN_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    work = tmp_path / "fed"
    p = subprocess.run(["bash", str(SCRIPT), str(work)], env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(work.glob("*.log")))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:] + logs
    agg = (work / "aggregator.log").read_text()
    basis_sha = hashlib.sha256((work / "public_basis.safetensors").read_bytes()).hexdigest()
    assert "done: 2 rounds committed" in agg and "silo hospital-a connected" in agg
    for s in ("hospital-a", "hospital-b", "hospital-c"):
        out = work / f"{s}-out"
        summary = json.loads((out / "federated_summary.json").read_text())
        assert summary["reason"] == "completed" and summary["rounds_included"] == [0, 1]
        assert summary["data"]["kept"] == 64 and summary["data"]["skipped"] == 0
        assert (out / "mm_projector.safetensors").is_file()  # where `silo train --local` puts it too
        assert "joined the aggregator" in (work / f"{s}.log").read_text()
        # DP trained in the coordinator's public basis: the ledger's plan names that file and its rank-8 span
        plan = [json.loads(x) for x in (out / "state" / "ledger.jsonl").read_text().splitlines() if '"dp_plan"' in x]
        assert plan[0]["public_basis_sha256"] == basis_sha and set(plan[0]["public_basis_rank"].values()) == {8}
        assert plan[0]["n_params"] == 2 * 8 * 32 + 2 * 32  # r·n per 32×32 weight and the biases, not 2,112
        # Fed-CMP's default reliability: each silo logs its own ρ per round (private: the sums carry w·ρ)
        rel = [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines() if '"reliability"' in x]
        assert [e["round"] for e in rel] == [0, 1] and all(0 <= r <= 1 for e in rel for r in e["rho"].values())
    # ... against the coordinator's update on its public set, trained by `silo reference`
    log = (work / "aggregator-out" / "reference" / "reference.log").read_text()
    assert "reference for round 0" in log and "reference for round 1" in log
