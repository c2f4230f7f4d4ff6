"""Runs benchmarks/bench_fuzz.py (the wire decoder fuzzer, unchanged) and writes its figures into
results/robustness.md, next to the other robustness figures of issue #10. Ends with one JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/robustness_fuzz.py [--n 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fuzz  # noqa: E402
from robustness_results import write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    r = bench_fuzz.main(["--n", str(a.n), "--seed", str(a.seed)])
    secs = time.time() - t0
    crafted = "\n".join(f"| {k} | {v['ms']} | {v['outcome']} |" for k, v in r["crafted"].items())
    goal = "met" if r["inputs"] >= 100_000 and r["untyped_exceptions"] == 0 and r["hangs"] == 0 else "NOT met"
    body = f"""
`fedalign.protocol.wire.decode` with the full registry, fed {r['inputs']:,} mutated frames of the
{r['corpus_messages']} network message types (seed {r['seed']}; {r['structured']:,} structure-aware,
{r['bytewise']:,} bytewise): **{r['untyped_exceptions']} untyped exceptions, {r['hangs']} hangs** (one decode over
{r['hang_threshold_s']} s); goal >= 100k inputs with 0 and 0: {goal}. Accepted {r['accepted']:,}
({r['accepted_not_round_tripping']} of them not surviving encode + decode again), refused with WireFormatError
{r['wire_format_error']:,}; slowest decode {r['slowest_decode_ms']} ms, mean {r['mean_decode_us']} µs;
{secs:.0f} s in all. Hand-made worst cases:

| input | ms | outcome |
|---|---|---|
{crafted}
"""
    cmd = f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/robustness_fuzz.py --n {a.n} --seed {a.seed}"
    if not a.no_write:
        print("wrote", write_section("fuzz", "Wire decoder fuzzing (benchmarks/bench_fuzz.py)", cmd, body))
    print(json.dumps({"bench": "robustness_fuzz", "inputs": r["inputs"], "untyped_exceptions": r["untyped_exceptions"],
                      "hangs": r["hangs"], "seconds": round(secs, 1)}))


if __name__ == "__main__":
    main()
