"""A federated round's time with secure aggregation relative to the same round with plain sums.

Runs the real round engine through the one in-process harness (``fedalign.lab.inprocess``: aggregator
``Coordinator`` + silo ``SiloParticipant`` threads over the in-memory transport, every message through
the wire format) for Fed-CMP on a projector of
a given size, once with SecAgg and once with plain sums, and reports the time spent in the
phases' sums (the aggregation part) and the whole round. Local training is replaced by a fixed
random update so that only federation costs are measured. Ends with one JSON line.

    python benchmarks/bench_round.py [--silos 4] [--d-vision 512] [--d-model 1024] [--rank 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings

from fedalign.host.process import apply_process_defaults

apply_process_defaults()

from fedalign.crypto.schemes import scheme_spec  # noqa: E402
from fedalign.fedcmp.strategies import make_strategy  # noqa: E402
from fedalign.lab.inprocess import RandomUpdate, random_projector, run_inprocess, silo_names  # noqa: E402
from fedalign.protocol.messages import SumScheme  # noqa: E402


def run(scheme: SumScheme, n: int, rounds: int, params, rank: int) -> list[dict]:
    strat = make_strategy("fedcmp", rank=rank, reliability="off")  # "reference" needs a public set: not measured here
    plain = scheme_spec(str(scheme)).insecure
    res = run_inprocess(
        strat, {s: RandomUpdate(i, 1e-3, fresh_on_retry=False) for i, s in enumerate(silo_names(n))}, params, strategy_name="fedcmp",
        policy=dict(rounds=rounds, min_silos=3, step_deadline_s=60, heartbeat_timeout_s=60, roster_grace_s=0.2,
                    scheme=scheme, clip=16.0, allow_insecure_plaintext=plain),
        silo_policy=dict(min_silos=3, heartbeat_interval_s=1.0, max_weight=64, allow_insecure_plaintext=plain,
                         scheme=str(scheme)),
        record_contributions=False, capture_events=False, join_timeout_s=30)
    if res.error is not None:
        raise res.error
    return res.state.history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--silos", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--d-vision", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=32)
    a = ap.parse_args()
    apply_process_defaults()
    warnings.simplefilter("ignore")
    params = random_projector(a.d_vision, a.d_model)
    out = {}
    for scheme in (SumScheme.PLAIN_INSECURE, SumScheme.SECAGG):
        hist = run(scheme, a.silos, a.rounds, params, a.rank)
        body = hist[1:] or hist  # round 0 includes warm-up (imports, first allocations)
        out[str(scheme)] = {
            "sum_s": statistics.median(h["sum_seconds"] for h in body),
            "round_s": statistics.median(h["seconds"] for h in body),
            "payload_bytes_per_silo": max(max(h["payload_bytes"].values()) for h in body),
            "wire_up_bytes_per_silo": max(max(h["wire_up_bytes"].values()) for h in body),
        }
    p, s = out["plain"], out["secagg"]
    numbers = sum(v.numel() for v in params.values())
    print(f"Fed-CMP round, {a.silos} silos, projector {a.d_vision}->{a.d_model} ({numbers:,} params), rank {a.rank}; "
          f"median of rounds 1..{a.rounds - 1}")
    print(f"{'':8} {'sums s':>8} {'round s':>8} {'payload B/silo':>15} {'wire up B/silo':>15}")
    for k, v in out.items():
        print(f"{k:8} {v['sum_s']:8.3f} {v['round_s']:8.3f} {v['payload_bytes_per_silo']:15,} {v['wire_up_bytes_per_silo']:15,}")
    ratio_sum = s["sum_s"] / p["sum_s"]
    ratio_round = s["round_s"] / p["round_s"]
    print(f"secure / plain: aggregation part {ratio_sum:.2f}x (goal <= 2x), whole round {ratio_round:.2f}x")
    print(json.dumps({"bench": "round", "silos": a.silos, "d_vision": a.d_vision, "d_model": a.d_model, "rank": a.rank,
                      "params": numbers, "plain_sum_s": round(p["sum_s"], 4), "secagg_sum_s": round(s["sum_s"], 4),
                      "plain_round_s": round(p["round_s"], 4), "secagg_round_s": round(s["round_s"], 4),
                      "secagg_over_plain_sum": round(ratio_sum, 3), "secagg_over_plain_round": round(ratio_round, 3),
                      "secagg_payload_bytes_per_silo": s["payload_bytes_per_silo"],
                      "plain_payload_bytes_per_silo": p["payload_bytes_per_silo"]}))


if __name__ == "__main__":
    main()
