"""The simulator over the networked runtime: a :class:`FederatedProblem` trained through the one
in-process harness (:mod:`fedalign.lab.inprocess`: the real Coordinator and SiloParticipants over
the in-memory network, crypto's real secure sums). This is the
same round code ``aggregator serve`` and ``silo train`` run over ZeroMQ; it is slower than
:func:`fedalign.lab.runner.simulate_problem`, so the results table uses the latter (same
Strategy calls; a test checks both engines give the same parameters).
"""

from __future__ import annotations

import math
import threading
import time

from fedalign.fedcmp.strategy import Strategy, Tensors, payload_numbers
from fedalign.lab.problem import FederatedProblem
from fedalign.lab.runner import SimulationResult

__all__ = ["simulate_networked"]


class _Trainer:
    """A silo's RoundTrainer over the problem; one lock, since silos may share one model in memory.
    FedProx's μ comes with each round from the silo runtime (the RoundStart's strategy), as in serve."""

    def __init__(self, problem: FederatedProblem, index: int, lock: threading.Lock) -> None:
        self.problem, self.index, self.lock = problem, index, lock

    def train(self, round_id: int, params: Tensors, *, prox_mu: float = 0.0):
        from fedalign.silo.store import TrainedUpdate

        with self.lock:
            res = self.problem.local_update(params, self.index, round_id, prox_mu)
        return TrainedUpdate(res.delta, res.n_samples, None)


def simulate_networked(
    problem: FederatedProblem,
    strategy_name: str,
    strategy: Strategy,
    rounds: int,
    *,
    scheme: str = "secagg",
    clip: float = 16.0,
    max_weight: float | None = None,
    allow_insecure_plaintext: bool = False,
    step_deadline_s: float = 30.0,
    train_deadline_s: float = 600.0,
) -> SimulationResult:
    """Run ``rounds`` rounds over the in-memory network; evaluate the final parameters.

    ``max_weight`` is the silos' public weight cap (w = min(n, cap)/cap); default: the largest
    round-0 shard any silo reports, computed here from the problem.
    """
    from fedalign.crypto.schemes import scheme_spec
    from fedalign.lab.inprocess import run_inprocess, silo_names
    from fedalign.lab.runner import attach_reference

    if hasattr(problem, "reset"):
        problem.reset()
    lock = threading.Lock()  # the silos and the coordinator's reference share one model in memory
    attach_reference(strategy, problem)  # Fed-CMP reliability "reference": the Coordinator's hook
    hook = getattr(strategy, "reference_update", None)
    if hook is not None:
        def locked(params, _hook=hook):
            with lock:
                return _hook(params)

        strategy.reference_update = locked
    names = silo_names(problem.n_silos)
    params = problem.init_params()
    sum_scheme = scheme_spec(scheme).name
    insecure = allow_insecure_plaintext and scheme_spec(scheme).insecure
    min_silos = min(3, len(names))
    if max_weight is None:
        max_weight = float(max(problem.local_update(params, k, 0, 0.0).n_samples for k in range(problem.n_silos))) \
            if not hasattr(problem, "shards") else float(max(len(row[0]) for row in problem.shards))
    t0 = time.perf_counter()
    run = run_inprocess(
        strategy, {s: _Trainer(problem, k, lock) for k, s in enumerate(names)}, params, strategy_name=strategy_name,
        policy=dict(rounds=rounds, min_silos=min_silos, train_deadline_s=train_deadline_s,
                    step_deadline_s=step_deadline_s, heartbeat_timeout_s=max(30.0, train_deadline_s),
                    roster_wait_s=60.0, roster_grace_s=0.5, scheme=sum_scheme, clip=clip,
                    allow_insecure_plaintext=insecure),
        silo_policy=dict(min_silos=min_silos, heartbeat_interval_s=0.5, aggregator_timeout_s=train_deadline_s + 60,
                         max_weight=max_weight, allow_insecure_plaintext=insecure, scheme=str(sum_scheme)),
        record_contributions=False, capture_events=False, join_timeout_s=30)
    if run.error is not None:
        raise run.error
    failed = run.failed()
    if failed:
        name, exc = next(iter(failed.items()))
        raise RuntimeError(f"networked simulation: {name} failed: {type(exc).__name__}: {exc}") from exc
    final = run.state
    res = SimulationResult(params=final.params)
    for rec in final.history:
        up = rec.get("wire_up_bytes", {})
        res.records.append({"round": rec["round"] + 1, **{k: v for k, v in rec.get("metrics", {}).items()},
                            "wire_up_bytes_per_silo": sum(up.values()) / max(len(up), 1),
                            "payload_bytes": rec.get("payload_bytes"), "seconds": rec.get("seconds")})
    evaluated = problem.evaluate(final.params)
    res.records[-1:] = [{**res.records[-1], **evaluated}] if res.records else []
    wire = [r["wire_up_bytes_per_silo"] for r in res.records]
    res.final = {
        "strategy": strategy.name,
        "engine": "network (aggregator.rounds.Coordinator + silo.participant over InMemoryNetwork)",
        "secure_sum": f"{scheme} (crypto via the runtime, clip {clip:g})",
        "rounds": final.round,
        "n_silos": len(names),
        **evaluated,
        "upload_bytes_per_silo_per_round": 4.0 * payload_numbers(strategy, final.params),
        "wire_up_bytes_per_silo_per_round": sum(wire) / len(wire) if wire else math.nan,
        "seconds": time.perf_counter() - t0,
    }
    return res
