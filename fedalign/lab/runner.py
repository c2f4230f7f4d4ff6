"""Run K silos × R rounds of one strategy on one problem, in process; plus the reference runs.

Local training comes from the problem (the silo trainer on the embedded world, or the toy);
every round then goes through :func:`simulation.engine.run_round`, i.e. the Strategy interface
and the injected sum function only. References: local-only (each silo alone) and centralized
(all silos' shards pooled, one pass), both on the same data budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from fedalign.protocol.errors import ConfigError
from fedalign.fedcmp.strategies import FedAvg
from fedalign.fedcmp.strategy import Strategy, Tensors, payload_numbers, silo_weight
from fedalign.lab.engine import init_state, run_round
from fedalign.lab.problem import FederatedProblem
from fedalign.lab.sums import PLAIN_LABEL, SumFn, plain_sum_insecure

__all__ = ["SimulationResult", "simulate_problem", "attach_reference", "silo_reliabilities", "local_only", "centralized"]


@dataclass
class SimulationResult:
    """Per-round records (what goes to metrics.jsonl) and the final summary (final.json)."""

    records: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    params: Tensors | None = None
    # the lab's view after the last round (a networked aggregator never sees these): each silo's private
    # carried state (Fed-CMP's error-feedback residuals) and the last round's aggregation weights
    silo_states: list[Tensors] = field(default_factory=list)
    last_weights: list[float] = field(default_factory=list)


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def simulate_problem(
    problem: FederatedProblem,
    strategy: Strategy,
    rounds: int,
    *,
    secure_sum: SumFn = plain_sum_insecure,
    secure_sum_label: str = PLAIN_LABEL,
    silos: Sequence[int] | None = None,
    eval_every: int = 1,
    weight_cap: int | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> SimulationResult:
    """Federated training of ``problem`` with ``strategy``; evaluates every ``eval_every`` rounds and at the end.

    ``silos`` restricts the federation (the oracle drops the unreliable ones); ``weight_cap`` is the
    public sample count at which w_k = 1 (default: the largest shard seen in the round).
    """
    silos = list(range(problem.n_silos)) if silos is None else list(silos)
    if not silos:
        raise ValueError("simulate_problem: no silos")
    if hasattr(problem, "reset"):  # optional hook: fresh trainers / privacy accountants per run
        problem.reset()
    attach_reference(strategy, problem)
    state = init_state(strategy, problem.init_params(), len(silos))
    res = SimulationResult()
    evaluated: dict = {}

    def emit(rec: dict) -> None:
        res.records.append(rec)
        if on_record is not None:
            on_record(rec)

    emit({"round": 0, **problem.evaluate(state.params)})
    bytes_per_round = []
    for t in range(rounds):
        t0 = time.perf_counter()
        local = [problem.local_update(state.params, k, t, strategy.prox_mu) for k in silos]
        cap = weight_cap or max(1, max(r.n_samples for r in local))
        weights = [silo_weight(r.n_samples, cap) for r in local]
        state, report = run_round(strategy, state, [r.delta for r in local], weights, secure_sum,
                                  final=t == rounds - 1)
        bytes_per_round.append(_mean(report.upload_bytes))
        rec = {
            "round": t + 1,
            "train_loss": _mean([r.train_loss for r in local]),
            "upload_bytes_per_silo": bytes_per_round[-1],
            "seconds_train_aggregate": time.perf_counter() - t0,
            "clipped_values": report.clipped_values,
            **report.metrics,
        }
        rho = silo_reliabilities(state.silo_states)
        if rho is not None:  # each silo's own ρ; the simulator knows every silo, the aggregator does not
            rec["rho"] = {str(k): v for k, v in zip(silos, rho)}
        if (t + 1) % eval_every == 0 or t + 1 == rounds:
            evaluated = problem.evaluate(state.params)
            rec.update(evaluated)
        emit(rec)
    res.params = state.params
    res.silo_states, res.last_weights = list(state.silo_states), list(weights) if rounds else []
    res.final = {
        "strategy": strategy.name,
        "secure_sum": secure_sum_label,
        "rounds": rounds,
        "n_silos": len(silos),
        "silos": silos,
        **evaluated,
        "upload_bytes_per_silo_per_round": _mean(bytes_per_round),
        # the mean over the run's rounds, the final one with what it adds (Fed-CMP's flushed residuals)
        "upload_bytes_per_silo_per_round_formula": 4 * ((rounds - 1) * payload_numbers(strategy, state.params) +
                                                        payload_numbers(strategy, state.params, strategy.round_public(
                                                            state.public, True))) / max(rounds, 1),
    }
    return res


def attach_reference(strategy: Strategy, problem: FederatedProblem) -> None:
    """Give Fed-CMP reliability "reference" the coordinator's reference update from the problem's public
    set (the strategy's hook; a problem without one keeps a hook the caller set). One clear error if
    neither has one."""
    config = getattr(strategy, "config", None)
    if getattr(config, "reliability", None) != "reference":
        return
    hook = getattr(problem, "reference_update", None)
    if hook is None and getattr(strategy, "reference_update", None) is not None:
        return  # the caller's own reference
    if hook is None:
        raise ConfigError(f"--reliability reference: scenario {type(problem).__name__} has no public set "
                          "for the coordinator's reference update")
    strategy.reference_update = hook


def silo_reliabilities(silo_states: Sequence[Tensors]) -> list[float] | None:
    """Each silo's last ρ (mean over its matrices) from its private state, or None without reliability."""
    from fedalign.fedcmp.core import RHO

    out = []
    for st in silo_states:
        vals = [float(v.reshape(-1)[0]) for k, v in st.items() if k.endswith("/" + RHO)]
        if not vals:
            return None
        out.append(sum(vals) / len(vals))
    return out


def local_only(problem: FederatedProblem, rounds: int, eval_every: int | None = None) -> SimulationResult:
    """Each silo trains alone on its own shards (one pass); metrics are the mean over silos,
    ``per_silo`` holds each silo's, and ``best_silo_*`` the silo with the lowest held-out NLL
    (the "best single silo alone" a federation has to beat)."""
    per = [simulate_problem(problem, FedAvg(), rounds, silos=[k], eval_every=eval_every or rounds)
           for k in range(problem.n_silos)]
    keys = [k for k, v in per[0].final.items() if isinstance(v, float)]
    final = {"strategy": "local-only", "rounds": rounds, "n_silos": problem.n_silos,
             **{k: _mean([p.final[k] for p in per]) for k in keys}, "upload_bytes_per_silo_per_round": 0.0}
    final["per_silo"] = [{k: p.final[k] for k in keys} for p in per]
    if "nll" in keys:
        best = min(range(len(per)), key=lambda i: per[i].final["nll"])
        final["best_silo"] = best
        final.update({f"best_silo_{k}": per[best].final[k] for k in keys})
    return SimulationResult(records=[], final=final)


def centralized(problem: FederatedProblem, rounds: int, lr: float | None = None) -> SimulationResult:
    """All silos' round-t shards pooled and trained in one pass (problem.centralized_update if any).

    ``lr``: the centralized run's own learning rate (default: the silos'); many sequential
    steps on pooled data may want a smaller one than a few local steps per round do."""
    params = problem.init_params()
    pooled = getattr(problem, "centralized_update", None)
    if lr is not None and pooled is None:
        raise ConfigError("centralized: this problem has no pooled update, so it cannot take its own lr")
    for t in range(rounds):
        if pooled is not None:
            delta = pooled(params, t) if lr is None else pooled(params, t, lr=lr)
            params = {k: params[k] + v for k, v in delta.items()}
        else:  # sequential pass over the silos' shards: same data, same number of steps, no averaging
            for k in range(problem.n_silos):
                d = problem.local_update(params, k, t, 0.0).delta
                params = {n: params[n] + d[n] for n in params}
    final = {"strategy": "centralized", "rounds": rounds, **({"lr": lr} if lr is not None else {}),
             **problem.evaluate(params),
             "upload_bytes_per_silo_per_round": 0.0}
    return SimulationResult(records=[], final=final, params=params)
