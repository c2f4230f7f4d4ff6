"""What binding a round costs (issue 25): the signed view, the one-set rule and the public checks.

1. Per-silo cost of one secure sum against silo count, serialised on one core: every silo's
   ``start``/``handle`` calls of one SecAgg+ instance (8 neighbours) timed one after another in
   this process (crypto only, no transport), at 10 and at 100 silos. With the view bound into the
   consistency signatures a silo checks the signatures of its own group only (k + 1 of them), so
   its cost should not grow with n; the ratio 100/10 is printed.
2. A secure round's time and the binding's share of it: one Fed-CMP round (two phases, SecAgg,
   the real Coordinator and SiloParticipants over the in-memory transport, every message through
   the wire format) on a projector of the given size; in the same process, the work the binding
   adds per round and silo (the round and phase digests, the public-value checks, the contribution
   check) timed on the same tensors. The ratio added / round is printed.

Writes its section of results/robustness.md and ends with one JSON line.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_binding.py [--values 4096] [--d-vision 512 --d-model 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from fedalign.host.process import apply_process_defaults

apply_process_defaults()

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness_results import write_section  # noqa: E402

from fedalign.crypto import SecureSumConfig  # noqa: E402
from fedalign.crypto.identity import Roster, generate_identity  # noqa: E402
from fedalign.crypto.secure_sum import AggregatorSecureSum, SiloSecureSum  # noqa: E402
from fedalign.fedcmp.phases import sum_inputs  # noqa: E402
from fedalign.fedcmp.strategies import make_strategy  # noqa: E402
from fedalign.fedcmp.strategy import contribution_problems  # noqa: E402
from fedalign.protocol.messages import RoundStart, SumScheme, SumStart  # noqa: E402
from fedalign.protocol.view import arrays_digest, phase_view, round_view  # noqa: E402

K = 8


def per_silo_sum_seconds(n: int, values: int, seed: int = 0) -> float:
    """Mean CPU seconds one silo spends in one SecAgg+ instance (its calls run one after another)."""
    ids = [f"s{i:03d}" for i in range(n)]
    keys = {s: generate_identity() for s in ids}
    roster = Roster({s: keys[s].public_bytes for s in ids})
    t = max(3, (K + 1) // 2 + 1)
    cfg = SecureSumConfig(mode="secagg", threshold=t, clip=4.0, allow_insecure_plaintext=False, neighbours=K,
                          graph_seed=b"bench", view=b"\x01" * 32, allow_dropouts=False)
    agg = AggregatorSecureSum(roster, 0, 1, cfg)
    rng = np.random.default_rng(seed)
    spent = dict.fromkeys(ids, 0.0)
    silos = {}
    out = []
    for s in ids:
        t0 = time.process_time()
        silos[s] = SiloSecureSum(keys[s], s, roster, 0, 1, cfg)
        silos[s].set_inputs({"x": rng.uniform(-1, 1, values)})
        out += [(s, m) for m in silos[s].start()]
        spent[s] += time.process_time() - t0
    while not agg.done:
        nxt = []
        for s, m in out:
            nxt += agg.handle(s, m)
        out = []
        for d, m in nxt:
            t0 = time.process_time()
            out += [(d, r) for r in silos[d].handle(m)]
            spent[d] += time.process_time() - t0
    return statistics.fmean(spent.values())


def binding_seconds(strategy, params, public, silos: int) -> float:
    """CPU seconds of what the binding adds to one round at one silo (both phases): the round's and each
    phase's view digests, the public-value checks and the contribution check (the contribution itself
    is computed beforehand: the strategy computes it with or without the binding)."""
    arr = {k: v.numpy() for k, v in params.items()}
    pub = {k: v.numpy() for k, v in public.items()}
    start = RoundStart(0, arr, pub, tuple(f"s{i}" for i in range(silos)), b"\x00" * 32, "fedcmp", {}, 2, 60.0, ())
    delta = {k: 0.01 * torch.randn_like(v) for k, v in params.items()}
    phases = []
    merged = dict(public)
    for phase in range(strategy.n_phases):
        if phase == 1:
            merged.update(strategy.aggregate(0, _fake_sums(strategy, params), params, public, {}).public)
        sub = {k: v.numpy() for k, v in merged.items() if k not in public}
        m = SumStart(0, phase, 1 + phase, SumScheme.SECAGG, start.roster, 3, 16.0, 0, 8192, sub)
        c, _ = strategy.silo_contribution(phase, delta, 0.5, merged, strategy.init_silo_state(params))
        phases.append((phase, m, dict(merged), c))
    t0 = time.process_time()
    view = round_view(start)
    for phase, m, merged_p, c in phases:
        phase_view(view, m, start.roster)
        assert not strategy.public_violations(phase, params, merged_p)
        assert not contribution_problems(strategy.contribution_spec(phase, params), c)
    return time.process_time() - t0


def _fake_sums(strategy, params):
    from fedalign.fedcmp.strategy import Sums

    spec = strategy.contribution_spec(0, params)
    return Sums({k: torch.randn(shape) for k, shape in spec.items()}, n_silos=3)


def secure_round_seconds(n: int, params, rank: int) -> float:
    import bench_round

    rows = bench_round.run(SumScheme.SECAGG, n, 2, params, rank)
    return statistics.median(r["seconds"] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", type=int, default=4096, help="values per silo in the 10->100 silo sum")
    ap.add_argument("--silos", type=int, default=4, help="silos in the round")
    ap.add_argument("--d-vision", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=32)
    a = ap.parse_args()
    torch.manual_seed(0)

    p10 = per_silo_sum_seconds(10, a.values)
    p100 = per_silo_sum_seconds(100, a.values)
    print(f"per-silo CPU in one SecAgg+ sum (k={K}, {a.values} values): 10 silos {p10 * 1e3:.1f} ms, "
          f"100 silos {p100 * 1e3:.1f} ms, ratio {p100 / p10:.2f}")

    import bench_round

    params = bench_round.projector(a.d_vision, a.d_model)
    strategy = make_strategy("fedcmp", rank=a.rank, reliability="off")
    public = strategy.init_public(params)
    bind = statistics.median(binding_seconds(strategy, params, public, a.silos) for _ in range(5))
    arr = {k: v.numpy() for k, v in params.items()}
    t0 = time.process_time()
    for _ in range(5):
        arrays_digest(arr)
    theta = (time.process_time() - t0) / 5
    rnd = secure_round_seconds(a.silos, params, a.rank)
    print(f"one Fed-CMP round, {a.silos} silos, SecAgg, projector {a.d_vision}->{a.d_model} rank {a.rank}: "
          f"{rnd:.3f} s; the binding's work per silo {bind * 1e3:.1f} ms ({bind / rnd:.1%} of the round), of which "
          f"{theta * 1e3:.1f} ms hash θ_t (the silo's update-reuse key hashed it before: {(bind - theta) / rnd:.1%} new)")
    body = f"""
Per-silo CPU in one SecAgg+ sum (8 neighbours, {a.values} values per silo, every silo's calls serialised on
one core, view bound, no dropouts allowed): {p10 * 1e3:.1f} ms at 10 silos, {p100 * 1e3:.1f} ms at 100:
**{p100 / p10:.2f}×** (a silo checks the consistency signatures of its own group only). One Fed-CMP round
(2 phases, {a.silos} silos, SecAgg, projector {a.d_vision}→{a.d_model}, rank {a.rank}, in-memory transport
with the wire format): {rnd:.3f} s; what the binding adds at each silo per round (round and phase digests,
public-value checks, contribution check): {bind * 1e3:.1f} ms, **{bind / rnd:.1%}** of the round; {theta * 1e3:.1f} ms
of it hash θ_t, which the silo hashed before for its update-reuse key (now one digest serves both), so
{(bind - theta) / rnd:.1%} is new at the silo. In this in-process round the 4 silos' threads share 2 cores and
one interpreter, so a round pays the silos' binding work one after another; on separate machines it
overlaps.
"""
    write_section("binding", "What binding a round costs (benchmarks/bench_binding.py)",
                  "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_binding.py", body)
    print(json.dumps({"bench": "binding", "per_silo_ms_10": round(p10 * 1e3, 2), "per_silo_ms_100": round(p100 * 1e3, 2),
                      "ratio_100_over_10": round(p100 / p10, 3), "round_s": round(rnd, 3),
                      "binding_ms_per_silo": round(bind * 1e3, 2), "theta_digest_ms": round(theta * 1e3, 2),
                      "binding_share_of_round": round(bind / rnd, 4)}))


if __name__ == "__main__":
    main()
