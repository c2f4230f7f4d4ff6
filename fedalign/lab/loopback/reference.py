"""A stand-in for ``silo reference`` in tests: the same line protocol (silo/reference.py) over a toy.

    python -m fedalign.lab.loopback.reference [--toy N] [--exit-at R] [--hang-at R] [--bad-shape-at R] [--symlink-at R]
                            [--stderr-bytes N]

``--toy N``: Δ_ref is the toy federation's own public reference (fedalign.lab.toy.small_toy(N), the
lab's hook) for the requested round; otherwise a fixed small step seeded by the round. The other
flags break it on purpose at round R: exit (a crash), never answer (a hang), a wrong tensor shape,
Δ_ref written elsewhere with a symlink at the requested path. ``--stderr-bytes N``: N bytes of noise
on stderr at start (the log cap).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedalign.host.process import apply_process_defaults
from fedalign.protocol.reference import REPLY_PREFIX as PREFIX


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--toy", type=int)
    ap.add_argument("--exit-at", type=int)
    ap.add_argument("--hang-at", type=int)
    ap.add_argument("--bad-shape-at", type=int)
    ap.add_argument("--symlink-at", type=int)
    ap.add_argument("--stderr-bytes", type=int, default=0)
    ap.add_argument("--marker", type=Path, help="a file touched once the process started (restarts append)")
    a = ap.parse_args()
    apply_process_defaults()
    if a.marker:
        with open(a.marker, "a") as f:
            f.write("started\n")
    fed = None
    if a.toy:
        from fedalign.lab.toy import small_toy as toy

        fed = toy(a.toy)
    for i in range(0, a.stderr_bytes, 100):
        sys.stderr.write("x" * 99 + "\n")
    print("loading nothing; ready", file=sys.stderr, flush=True)
    print(PREFIX + json.dumps({"ready": True, "records": 32, "shards": 1}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t = req["round"]
        if t == a.exit_at:
            print(f"toy reference: exiting at round {t} on purpose", file=sys.stderr, flush=True)
            sys.exit(3)
        if t == a.hang_at:
            import time

            time.sleep(3600)
        params = load_file(req["params"])
        if fed is not None:
            fed._reference_calls = t
            delta = fed.reference_update(params)
        else:
            g = torch.Generator().manual_seed(1000 + t)
            delta = {k: 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        if t == a.bad_shape_at:
            k = next(iter(delta))
            delta[k] = torch.zeros(1, 1)
        out = req["out"]
        if t == a.symlink_at:
            real = Path(out).with_name("elsewhere.safetensors")
            save_file({k: v.contiguous() for k, v in delta.items()}, str(real))
            Path(out).symlink_to(real)
        else:
            save_file({k: v.contiguous() for k, v in delta.items()}, out)
        print(PREFIX + json.dumps({"round": t, "ok": True, "n_samples": 32, "seconds": 0.0}), flush=True)


if __name__ == "__main__":
    main()
