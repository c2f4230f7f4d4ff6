"""The simulator over the networked runtime: the real Coordinator and SiloParticipants, in one process.

Silos run in threads and talk to ``aggregator.rounds.Coordinator`` through
``fedalign.protocol.transport.InMemoryNetwork`` (every message encoded to wire frames and decoded), with
crypto's real secure sum; local training comes from a :class:`FederatedProblem`. This is the
same round code ``aggregator serve`` and ``silo train`` run over ZeroMQ; it is slower than
:func:`simulation.runner.simulate_problem`, so the results table uses the latter (same
Strategy calls; a test checks both engines give the same parameters).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from fedalign.fedcmp.strategies import strategy_options
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
    from fedalign.aggregator.checkpoint import RunState
    from fedalign.aggregator.rounds import Coordinator, RoundPolicy
    from fedalign.protocol.messages import wire_registry
    from fedalign.protocol.transport import InMemoryNetwork
    from fedalign.crypto.identity import generate_identity
    from fedalign.silo.participant import SiloParticipant, SiloPolicy

    if hasattr(problem, "reset"):
        problem.reset()
    lock = threading.Lock()  # the silos and the coordinator's reference share one model in memory
    from fedalign.lab.runner import attach_reference

    attach_reference(strategy, problem)  # Fed-CMP reliability "reference": the Coordinator's hook
    hook = getattr(strategy, "reference_update", None)
    if hook is not None:
        def locked(params, _hook=hook):
            with lock:
                return _hook(params)

        strategy.reference_update = locked
    names = [f"silo-{k}" for k in range(problem.n_silos)]
    ids = {s: generate_identity() for s in names}
    trusted = {s: k.public_hex for s, k in ids.items()}
    net = InMemoryNetwork(wire_registry())
    params = problem.init_params()
    state = RunState(0, params, strategy.init_public(params), strategy.init_server_state(params))
    from fedalign.crypto.schemes import scheme_spec

    sum_scheme = scheme_spec(scheme).name
    insecure = allow_insecure_plaintext and scheme_spec(scheme).insecure
    min_silos = min(3, len(names))
    policy = RoundPolicy(rounds=rounds, min_silos=min_silos, train_deadline_s=train_deadline_s,
                         step_deadline_s=step_deadline_s, heartbeat_timeout_s=max(30.0, train_deadline_s),
                         roster_wait_s=60.0, roster_grace_s=0.5, scheme=sum_scheme, clip=clip,
                         allow_insecure_plaintext=insecure)
    coord = Coordinator(net.server(), strategy, strategy_name=strategy_name,
                        strategy_options=strategy_options(strategy), identities=trusted, policy=policy, state=state)
    if max_weight is None:
        max_weight = float(max(problem.local_update(params, k, 0, 0.0).n_samples for k in range(problem.n_silos))) \
            if not hasattr(problem, "shards") else float(max(len(row[0]) for row in problem.shards))
    stop = threading.Event()
    outcomes: dict[str, Any] = {}

    def silo(k: int, name: str) -> None:
        sp = SiloPolicy(min_silos=min_silos, heartbeat_interval_s=0.5, aggregator_timeout_s=train_deadline_s + 60,
                        max_weight=max_weight, allow_insecure_plaintext=insecure, scheme=str(sum_scheme))
        p = SiloParticipant(name, net.client(name), _Trainer(problem, k, lock),
                            identity=ids[name], trusted=trusted, policy=sp, stop=stop)
        try:
            outcomes[name] = p.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            outcomes[name] = exc

    threads = [threading.Thread(target=silo, args=(k, s), daemon=True) for k, s in enumerate(names)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    try:
        final = coord.run()
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)
    failed = {s: o for s, o in outcomes.items() if isinstance(o, BaseException)}
    if failed:
        name, exc = next(iter(failed.items()))
        raise RuntimeError(f"networked simulation: {name} failed: {type(exc).__name__}: {exc}") from exc
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
