"""A multi-process silo: ``torchrun --nproc_per_node 2 silo train --local`` (gloo, real processes)
trains the projector one process trains at the same global batch, with DP and without, and its
second rank writes nothing.

Each rank gets its own ``--out`` (``out/rank$RANK``) through a shell wrapper, so anything rank 1
wrote would show up in ``out/rank1``. The one-process reference runs in-process (CliRunner).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedalign.silo.cli import app

TOLERANCE = 1e-5  # max abs difference of any projector entry, float32, after 2 rounds x 3 steps


def _toml(tmp_path, tiny_dir, data_files, dp: bool, device: str = "cpu"):
    sections = {
        "model": {"vision_tower": str(tiny_dir / "vit"), "llm": str(tiny_dir / "llama"), "device": device},
        "data": {"source": "files", "train": str(data_files / "train.jsonl"), "eval": str(data_files / "train.json"),
                 "shard_size": 24},
        "train": {"rounds": 2, "batch_size": 8, "local_steps": 3, "seed": 3, "physical_batch_size": 3,
                  "optimizer": "sgd", "lr": 0.5},  # SGD: a wrong gradient scale moves the step (Adam hides it)
        "eval": {"batch_size": 16},
    }
    if dp:  # seeded noise and sampling (tests only): the same draw in both runs
        sections["privacy"] = {"enabled": True, "epsilon": 50.0, "max_grad_norm": 0.5, "insecure_seeded_noise": True}
    lines = []
    for sec, kv in sections.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in kv.items()]
    p = tmp_path / "silo.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def _torchrun(cfg, out, nproc: int):
    """``torchrun --nproc_per_node nproc`` of ``silo train --local``, rank r writing to out/rank<r>.
    ``-P``: the working directory must not shadow the installed package (the GPU check maps the
    repository's folders into the fedalign namespace elsewhere; its cwd holds a bare fedalign/)."""
    cmd = (f'exec "{sys.executable}" -P -m fedalign.silo.cli train --local -c "{cfg}" --out "{out}/rank$RANK"')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEDALIGN_DIST_TIMEOUT_S": "120"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "--no-python", "sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=300)


def _projector(out):
    return load_file(str(out / "mm_projector.safetensors"))


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_two_processes_train_the_one_process_projector(tmp_path, tiny_dir, data_files, dp):
    cfg = _toml(tmp_path, tiny_dir, data_files, dp)
    ref = CliRunner().invoke(app, ["train", "--local", "-c", str(cfg), "--out", str(tmp_path / "one")])
    assert ref.exit_code == 0, ref.output
    r = _torchrun(cfg, tmp_path / "two", 2)
    assert r.returncode == 0, r.stderr[-3000:]
    main, other = tmp_path / "two" / "rank0", tmp_path / "two" / "rank1"
    assert not other.exists(), sorted(p.name for p in other.rglob("*"))  # rank 1 wrote nothing at all
    assert sorted(p.name for p in main.rglob("*")) == sorted(p.name for p in (tmp_path / "one").rglob("*"))

    a, b = _projector(tmp_path / "one"), _projector(main)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max abs diff 1 vs 2 processes ({'dp' if dp else 'plain'}): {diff:.3g}")
    assert diff <= TOLERANCE

    one, two = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "one", main))
    assert two["samples_seen"] == one["samples_seen"] == 48
    assert abs(two["rounds"][0]["train_loss"] - one["rounds"][0]["train_loss"]) < 1e-4
    if dp:  # rank 0's accountant saw the global q and steps: the same charges, the same ε
        p1, p2 = (json.loads((d / "state" / "privacy.json").read_text()) for d in (tmp_path / "one", main))
        assert p2["charges"] == p1["charges"] and len(p1["charges"]) == 2
        assert p1["charges"][0]["sample_rate"] == pytest.approx(8 / 24)
        assert two["epsilon_spent"] == one["epsilon_spent"]
    ledger = [json.loads(line) for line in (main / "state" / "ledger.jsonl").read_text().splitlines()]
    ref_ledger = [json.loads(line) for line in (tmp_path / "one" / "state" / "ledger.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in ledger] == [e["kind"] for e in ref_ledger]  # one writer, no duplicated entries


def test_a_failing_rank_ends_the_run(tmp_path, tiny_dir, data_files):
    """Rank 1 cannot load its LM: the run ends non-zero (nobody waits forever), rank 1's error is one
    line, and rank 0 exports nothing."""
    cfg = _toml(tmp_path, tiny_dir, data_files, dp=False)
    cmd = (f'[ "$RANK" = 1 ] && bad="--set model.llm=\\"{tmp_path}/no-such-llm\\""; '
           f'exec "{sys.executable}" -P -m fedalign.silo.cli train --local -c "{cfg}" '
           f'--out "{tmp_path}/two/rank$RANK" $bad')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEDALIGN_DIST_TIMEOUT_S": "60"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "--no-python", "sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "error: ModelLoadError: rank 1 of 2: model.llm" in r.stderr and "no-such-llm" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "two" / "rank0" / "mm_projector.safetensors").exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
def test_a_cuda_process_under_torchrun_joins_nccl_and_trains_the_in_process_projector(tmp_path, tiny_dir, data_files):
    """The NCCL path (one GPU: one rank): the same projector as the in-process run on the same GPU."""
    cfg = _toml(tmp_path, tiny_dir, data_files, dp=True, device="cuda")
    ref = CliRunner().invoke(app, ["train", "--local", "-c", str(cfg), "--out", str(tmp_path / "one")])
    assert ref.exit_code == 0, ref.output
    r = _torchrun(cfg, tmp_path / "nccl", 1)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _projector(tmp_path / "one"), _projector(tmp_path / "nccl" / "rank0")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max abs diff in-process vs torchrun/NCCL on cuda: {diff:.3g}")
    assert diff <= 1e-4

