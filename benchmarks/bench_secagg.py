"""Secure-aggregation benchmark on LLaVA-1.5 projector shapes (1024x4096 + 4096x4096 ≈ 21M).

Prints, measured in one run: client masking time for k = 3 and 9 neighbours; the raw
AES-256-CTR keystream and fixed-point quantization times for the same bytes; Flower's
SecAgg+ client masking stage on the same vectors when `flwr` is importable (here, or in the
interpreter named by FLWR_PYTHON); masked upload bytes per parameter; aggregator unmask
time with 0 and 2 dropouts; CKKS encryption time and bytes for 1M values. Ends with one
JSON line. Not a test: nothing here asserts a time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_secagg.py [--reps 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

try:
    from fedalign.host.process import apply_process_defaults
except ImportError:  # --flower-only runs in Flower's own venv, without fedalign
    os.environ.setdefault("OMP_NUM_THREADS", "1")
else:
    apply_process_defaults(torch_too=False)

import numpy as np

SHAPES = {"mm_projector.0.weight": (4096, 1024), "mm_projector.2.weight": (4096, 4096)}
N_SILOS = 12  # k = 9 is then a true SecAgg+ graph (not complete)
SCALE = 0.05  # typical magnitude of a projector update


def _inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-SCALE, SCALE, s).astype(np.float32) for n, s in shapes.items()}


def _median(xs):
    return statistics.median(xs)


# ---- Flower (runs in an interpreter with flwr; imports nothing of ours) ------------------


def flower_masking(k: int, shapes: dict, reps: int) -> float:
    """Median seconds of Flower's SecAgg+ client stage 2 (quantize + masks) for k neighbours."""
    import importlib

    sm = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    from flwr.common import ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    params = ndarrays_to_parameters(list(_inputs(shapes).values()))
    setup = {
        Key.SAMPLE_NUMBER: k + 1, Key.SHARE_NUMBER: k + 1, Key.THRESHOLD: k // 2 + 1,
        Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 4194304, Key.MOD_RANGE: 4294967296, Key.MAX_WEIGHT: 1000.0,
    }
    times = []
    for _ in range(reps + 1):  # first one warms up
        states = []
        for nid in range(k + 1):
            st = sm.SecAggPlusState()
            st.nid = nid
            sm._setup(st, setup)
            states.append(st)
        keys = {str(s.nid): (s.pk1, s.pk2) for s in states}
        sent = [sm._share_keys(s, keys) for s in states]
        me = states[0]
        srcs, cts = [], []
        for s, out in zip(states[1:], sent[1:]):
            i = out[Key.DESTINATION_LIST].index(me.nid)
            srcs.append(s.nid)
            cts.append(out[Key.CIPHERTEXT_LIST][i])
        t0 = time.perf_counter()
        sm._collect_masked_vectors(me, {Key.CIPHERTEXT_LIST: cts, Key.SOURCE_LIST: srcs}, 500, params)
        times.append(time.perf_counter() - t0)
    return _median(times[1:])


def _flower(ks, shapes, reps):
    """{k: seconds} from flwr here, or from FLWR_PYTHON in a subprocess; None if neither."""
    try:
        import flwr  # noqa: F401

        return {k: flower_masking(k, shapes, reps) for k in ks}, "in-process"
    except ImportError:
        pass
    py = os.environ.get("FLWR_PYTHON")
    if not py:
        return None, "flwr not importable and FLWR_PYTHON unset"
    cmd = [py, __file__, "--flower-only", "--reps", str(reps), "--ks", *map(str, ks), "--shapes", json.dumps(shapes)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        return None, f"FLWR_PYTHON run failed: {out.stderr.strip().splitlines()[-1:]}"
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {int(k): v for k, v in res.items()}, f"subprocess {py}"


# ---- ours ---------------------------------------------------------------------------------


def _roster(n):
    from fedalign.crypto import Roster, generate_identity

    ids = {f"silo{i:02d}": generate_identity() for i in range(n)}
    return ids, Roster({s: i.public_bytes for s, i in ids.items()})


def _to_masked_input_step(k, n, t, round_id):
    """Silos and aggregator of one instance after key sharing: (cfg, silos, agg, relays)."""
    from fedalign.crypto import AggregatorSecureSum, SecureSumConfig, SiloSecureSum

    cfg = SecureSumConfig(mode="secagg", threshold=t, clip=1.0, allow_insecure_plaintext=False, neighbours=k)
    idents, roster = _roster(n)
    silos = {s: SiloSecureSum(idents[s], s, roster, round_id, 0, cfg) for s in idents}
    agg = AggregatorSecureSum(roster, round_id, 0, cfg)
    out = [r for s in silos for m in silos[s].start() for r in agg.handle(s, m)]
    out = [r for d, m in out for a in silos[d].handle(m) for r in agg.handle(d, a)]
    return cfg, silos, agg, dict(out)


def client_masking(k, shapes, reps):
    """Median seconds for one silo: encode + mask (set_inputs + handling the share relay)."""
    x = _inputs(shapes)
    t = (k + 1) // 2 + 1
    times, upload = [], None
    for rep in range(reps + 1):
        _, silos, _, relays = _to_masked_input_step(k, N_SILOS, t, round_id=rep)
        s = "silo00"
        t0 = time.perf_counter()
        silos[s].set_inputs(x)
        [msg] = silos[s].handle(relays[s])
        times.append(time.perf_counter() - t0)
        upload = msg.masked.nbytes / msg.masked.size
    return _median(times[1:]), upload


def aggregator_unmask(k, shapes, n_drop):
    """Seconds the aggregator takes to end the unmask step (reconstruct + remove masks)."""
    from fedalign.crypto import Stage

    x = _inputs(shapes)
    t = (k + 1) // 2 + 1
    cfg, silos, agg, relays = _to_masked_input_step(k, N_SILOS, t, round_id=100 + n_drop)
    graph = cfg.graph(sorted(silos), 100 + n_drop, 0)
    dropped = []
    for s in sorted(silos):  # pick dropouts that are not neighbours, so every group keeps >= t
        if len(dropped) < n_drop and all(s not in graph[d] for d in dropped):
            dropped.append(s)
    out = []
    for s in sorted(silos):
        if s in dropped:
            continue
        silos[s].set_inputs(x)
        [m] = silos[s].handle(relays[s])
        out += agg.handle(s, m)
        del m
    out = agg.close_step() if dropped else out
    assert agg.stage == Stage.CONSISTENCY
    out = [r for d, m in out for a in silos[d].handle(m) for r in agg.handle(d, a)]
    answers = [(d, a) for d, m in out for a in silos[d].handle(m)]
    for d, a in answers[:-1]:
        agg.handle(d, a)
    t0 = time.perf_counter()
    agg.handle(*answers[-1])  # the last answer ends the step: unmask runs here
    elapsed = time.perf_counter() - t0
    res = agg.result
    want = (len(silos) - len(dropped)) * x["mm_projector.0.weight"][:4, :4].astype(np.float64)
    assert np.abs(res.sums["mm_projector.0.weight"][:4, :4] - want).max() < 1e-4
    return elapsed


def keystream_time(n_words, reps):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    buf = np.zeros(n_words * 4 + 16, np.uint8)
    times = []
    for _ in range(reps + 1):
        buf[:] = 0
        enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
        t0 = time.perf_counter()
        enc.update_into(buf[: n_words * 4], buf)
        times.append(time.perf_counter() - t0)
    return _median(times[1:])


def quantization_time(shapes, reps):
    from fedalign.crypto.hazmat.fixedpoint import encode_into

    x = _inputs(shapes)
    out = np.empty(sum(a.size for a in x.values()), np.uint32)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        at = 0
        for a in x.values():
            encode_into(a, out[at : at + a.size], 1.0, 20)
            at += a.size
        times.append(time.perf_counter() - t0)
    return _median(times[1:])


def ckks_encrypt(n_values):
    from fedalign.crypto.hazmat import ckks

    ctx = ckks.new_context(8192, 40)
    x = np.random.default_rng(0).uniform(-1, 1, n_values)
    t0 = time.perf_counter()
    chunks = ckks.encrypt_chunks(ctx, x, ckks.chunk_slots(8192))
    return time.perf_counter() - t0, sum(len(c) for c in chunks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1/16 of the projector, for a smoke run")
    ap.add_argument("--flower-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ks", type=int, nargs="*", default=[3, 9], help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = {k: tuple(v) for k, v in json.loads(args.shapes).items()} if args.shapes else dict(SHAPES)
    if args.quick:
        shapes = {k: (s[0] // 16, s[1]) for k, s in shapes.items()}
    if args.flower_only:
        print(json.dumps({k: flower_masking(k, shapes, args.reps) for k in args.ks}))
        return
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    print(f"shapes {shapes}: {n_params / 1e6:.1f}M parameters; {N_SILOS} silos; median of {args.reps} runs")

    ks_t = keystream_time(n_params, args.reps)
    q_t = quantization_time(shapes, args.reps)
    print(f"raw AES-256-CTR keystream, {4 * n_params / 1e6:.0f} MB: {ks_t * 1e3:.1f} ms; quantization: {q_t * 1e3:.1f} ms")
    ours, upload = {}, None
    for k in (3, 9):
        ours[k], upload = client_masking(k, shapes, args.reps)
        bound = k * ks_t + q_t
        print(f"client masking k={k}: {ours[k] * 1e3:.1f} ms = {ours[k] / bound:.2f} x (k x keystream + quantization)")
    print(f"masked upload: {upload:.1f} bytes per parameter")
    flower, how = _flower([3, 9], shapes, args.reps)
    if flower:
        for k in (3, 9):
            print(f"Flower SecAgg+ client masking k={k}: {flower[k] * 1e3:.1f} ms; ours/Flower = {ours[k] / flower[k]:.3f} (1/{flower[k] / ours[k]:.1f})  [{how}]")
    else:
        print(f"Flower: skipped ({how}); pip install flwr==1.41.0, or point FLWR_PYTHON at a python that has it")
    unmask = {d: aggregator_unmask(9, shapes, d) for d in (0, 2)}
    for d, v in unmask.items():
        print(f"aggregator unmask, k=9, {d} dropouts: {v * 1e3:.1f} ms")
    n_ckks = 1_000_000 if not args.quick else 65_536
    c_t, c_b = ckks_encrypt(n_ckks)
    print(f"CKKS encrypt {n_ckks} values: {c_t * 1e3:.0f} ms, {c_b / 1e6:.1f} MB ({c_b / n_ckks:.1f} bytes/value)")
    figures = {
        "bench": "secagg",
        "n_params": n_params,
        "n_silos": N_SILOS,
        "keystream_ms": round(ks_t * 1e3, 2),
        "quantization_ms": round(q_t * 1e3, 2),
        "mask_k3_ms": round(ours[3] * 1e3, 2),
        "mask_k9_ms": round(ours[9] * 1e3, 2),
        "mask_k9_over_k_keystream_plus_quant": round(ours[9] / (9 * ks_t + q_t), 3),
        "flower_mask_k3_ms": round(flower[3] * 1e3, 2) if flower else None,
        "flower_mask_k9_ms": round(flower[9] * 1e3, 2) if flower else None,
        "mask_k9_over_flower": round(ours[9] / flower[9], 4) if flower else None,
        "upload_bytes_per_param": upload,
        "unmask_k9_0drop_ms": round(unmask[0] * 1e3, 2),
        "unmask_k9_2drop_ms": round(unmask[2] * 1e3, 2),
        "ckks_values": n_ckks,
        "ckks_encrypt_ms": round(c_t * 1e3, 1),
        "ckks_bytes": c_b,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
