"""Process defaults are set in one place (fedalign/host/process.py), and every entry point uses it."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# build.py pins one thread around each pretraining (determinism), then restores the caller's count
# bench_secagg.py also runs itself in Flower's venv, where fedalign is not installed
ALLOWED = {"fedalign/host/process.py", "fedalign/world/build.py", "benchmarks/bench_secagg.py"}


def test_nothing_else_sets_threads_or_thread_variables():
    found = []
    for folder in ("fedalign", "silo", "aggregator", "crypto", "scripts", "examples", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            if rel in ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr == "set_num_threads":
                    found.append(f"{rel}:{node.lineno} calls set_num_threads")
                if isinstance(node, ast.Constant) and node.value in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                    found.append(f"{rel}:{node.lineno} names {node.value}")
    assert not found, "\n".join(found)


def test_defaults_apply_and_existing_values_win():
    code = ("import os, torch; from fedalign.host.process import apply_process_defaults; apply_process_defaults(); "
            "print(os.environ['HF_HUB_OFFLINE'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "OMP_NUM_THREADS", "FEDALIGN_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=ROOT.parent).stdout.split()
    assert out == ["1", "1", "1"]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "FEDALIGN_THREADS": "2", "HF_HUB_OFFLINE": "0"},
                         capture_output=True, text=True, check=True, cwd=ROOT.parent).stdout.split()
    assert out == ["0", "1", "2"]
