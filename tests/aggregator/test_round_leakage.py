"""A round is one secure computation: what the aggregator can combine over a whole run (every sum of
every phase, round and retry, and the public values it chose) gives back no single silo's update.

Each attack below recovered a silo's update on 3c16410 (fedalign/lab/leakage.py measures what
is identifiable by exact linear algebra; 1.0 = the whole update). Each is now refused or abandoned.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from fedalign.fedcmp import core as fm
from fedalign.lab.leakage import attack_run, random_declare, random_schedule, replace_public, worst

NONE = 1e-6  # identifiable fraction that counts as nothing (exact arithmetic gives 0; float noise ~1e-12)


def _abandoned(run):
    return [e for e in run.events if e["event"] == "round_abandoned"]


def test_an_honest_run_reveals_only_sums():
    run = attack_run(n_silos=4, rounds=2)
    assert run.error is None and len(run.history) == 2
    assert len(run.captured) == 4 and worst(run) < NONE


def test_the_harness_sees_a_leak_when_phases_sum_different_sets():
    # the harness itself must be able to fail: give it the captured sums of one round plus one silo's
    # own phase-0 input relabelled as a sum (what a one-silo "sum" would be)
    run = attack_run(n_silos=4, rounds=1)
    c = run.captured[0]
    one = c.included[0]
    x = run.truth[(one, c.instance)]
    q = {k: v for k, v in c.public[one].items() if k.endswith("/" + fm.Q)}
    forged = type(c)(c.round, 0, c.instance + 10_000, (one,),
                     {fm.key(n, fm.P): x[n] @ q[fm.key(n, fm.Q)] for n in x}, {one: c.public[one]})
    run.truth[(one, c.instance + 10_000)] = x
    run.captured.append(forged)
    assert worst(run) > 0.2


def test_a_dropout_between_phases_abandons_the_round():
    # issue 25, attack 1: silo-3 crashes after phase 0 completed. On 3c16410 the round committed with
    # the other three and Uᵀ·ΣP − ΣA·Q = Uᵀ X₃ Q gave silo-3's projected update back.
    run = attack_run(n_silos=4, rounds=1, schedule={"silo-3": ("UnmaskResponse", 0, 0)})
    assert worst(run) < NONE  # 3c16410: part of one silo's update identifiable
    assert run.error is None
    why = _abandoned(run)[0]["reason"] if _abandoned(run) else ""
    assert "after phase 0" in why or "allows no dropouts" in why or "4 needed" in why, why
    assert run.history[0]["survivors"] == ["silo-0", "silo-1", "silo-2"]


def test_a_dropout_the_aggregator_only_declares_is_refused_by_the_silos():
    # the same as a malicious aggregator: phase 1 over three although all four are alive
    def declare(t, phase, parts):
        return [s for s in parts if not (t == 0 and phase == 1 and s == "silo-3")]

    run = attack_run(n_silos=4, rounds=1, declare=declare)
    assert worst(run) < NONE  # 3c16410: part of one silo's update identifiable
    assert not [c for c in run.captured if c.phase == 1]
    assert any("not the set phase 0 summed" in r["reason"] for r in run.refusals)
    assert not run.history and run.error is not None  # every attempt abandoned, nothing committed


def test_cross_phase_differencing_is_refused():
    # attack 3: phase 0 over {0, 1, 2}, phase 1 over all four: ΣA − Uᵀ·ΣP·… isolates silo-3
    def declare(t, phase, parts):
        if t == 0 and phase == 0:
            return [s for s in parts if s != "silo-3"]
        if t == 0 and phase == 1:
            return sorted({*parts, "silo-3"})
        return parts

    run = attack_run(n_silos=4, rounds=1, declare=declare)
    assert worst(run) < NONE  # 3c16410: part of one silo's update identifiable
    refused = {r["silo"]: r["reason"] for r in run.refusals}
    assert "did not complete for this silo" in refused.get("silo-3", "")
    assert any("not the set phase 0 summed" in why for s, why in refused.items() if s != "silo-3")
    assert not [c for c in run.captured if c.phase == 1] and not run.history


def test_equivocating_a_full_basis_to_one_silo_is_refused():
    # attack 2: the victim gets Q = I (its "sketch" would be its whole matrix), the others Q = 0 (their
    # share of the sum vanishes): the phase-0 sum was the victim's update, to 7.4e-7
    def tamper(to, msg):
        if type(msg).__name__ != "RoundStart" or msg.round != 0:
            return msg
        upd = {}
        for k, v in msg.public.items():
            if k.endswith("/" + fm.Q):
                n = v.shape[0]
                upd[k] = np.eye(n, dtype=v.dtype) if to == "silo-1" else np.zeros((n, n), dtype=v.dtype)
        return replace_public(msg, upd)

    run = attack_run(n_silos=4, rounds=1, tamper=tamper, max_failed_rounds=1)
    assert worst(run) < NONE  # 3c16410: part of one silo's update identifiable
    reasons = [r["reason"] for r in run.refusals]
    assert len(reasons) == 4 and all("has shape" in why for why in reasons)
    assert not run.captured



def test_equivocating_a_valid_basis_to_one_silo_aborts_the_sum():
    # a same-shaped orthonormal basis passes every check at the silo; only the signed view shows that
    # silo-1 computed under other public values than the rest, and nothing is unmasked
    rng = np.random.default_rng(0)

    def tamper(to, msg):
        if type(msg).__name__ != "RoundStart" or msg.round != 0 or to != "silo-1":
            return msg
        upd = {}
        for k, v in msg.public.items():
            if k.endswith("/" + fm.Q):
                q, _ = np.linalg.qr(rng.standard_normal(v.shape))
                upd[k] = q.astype(v.dtype)
        return replace_public(msg, upd)

    run = attack_run(n_silos=4, rounds=1, tamper=tamper, max_failed_rounds=1)
    assert not [c for c in run.captured if c.round == 0]
    assert _abandoned(run) and "aborted" in _abandoned(run)[0]["reason"]


def test_equivocating_the_later_phase_basis_aborts_the_sum():
    # the same for U in phase 1's SumStart: silo-2 gets the identity's first r columns
    def tamper(to, msg):
        if type(msg).__name__ != "SumStart" or msg.phase != 1 or to != "silo-2":
            return msg
        upd = {}
        for k, v in msg.public.items():
            if k.endswith("/" + fm.U):
                upd[k] = np.eye(v.shape[0], v.shape[1], dtype=v.dtype)
        return replace_public(msg, upd)

    run = attack_run(n_silos=4, rounds=1, tamper=tamper, max_failed_rounds=1)
    assert worst(run) < NONE  # 3c16410: part of one silo's update identifiable
    assert not [c for c in run.captured if c.phase == 1]


@pytest.mark.parametrize("pinned", [True, False])
def test_options_outside_the_silos_pin_are_refused_before_training(pinned):
    # attack 4: rho_floor 0.99, κ 1e-12, no smoothing and reliability "reference" push every other
    # silo's ρ to 0, so the reliable sums are the victim's alone. A pinned silo refuses any option it did
    # not choose; an unpinned DP silo refuses reliability.
    from fedalign.fedcmp.pin import StrategyPin

    evil = {"reliability": "reference", "rho_floor": 0.99, "kappa": 1e-12, "rho_smoothing": 0.0}
    pin = StrategyPin("fedcmp", {"rank": 2, "reliability": "off", "error_feedback": False}, dp=True)
    policy = {"strategy": pin} if pinned else {"dp_enabled": True}
    from fedalign.lab import leakage

    real = leakage.make_strategy

    def with_reference(name, **opts):  # the aggregator's own strategy needs a reference hook
        s = real(name, **opts)
        s.reference_update = lambda p: {k: 0.01 * v for k, v in p.items()}
        return s

    leakage.make_strategy = with_reference
    try:
        run = attack_run(n_silos=4, rounds=1, options=evil, silo_policy=policy, max_failed_rounds=1)
    finally:
        leakage.make_strategy = real
    assert run.error is not None and not run.captured
    assert len({r["silo"] for r in run.refusals}) == 4
    want = "rho_floor = 0.99" if pinned else "under DP"
    assert all(want in r["reason"] for r in run.refusals)
    assert not any(e["event"] == "training_started" for e in run.events)


def test_random_dropout_schedules_reveal_only_sums():
    # a sample of the harness's sweep (`python fedalign/lab/leakage.py 200` runs 200): crashes at
    # every phase boundary and dropouts the aggregator declares, over two rounds of five silos
    rng = random.Random(2512)
    for _ in range(6):
        sched = random_schedule(rng, 5, 2, 2)
        run = attack_run(n_silos=5, rounds=2, schedule=sched, declare=random_declare(rng, 5), step_deadline_s=0.4)
        assert worst(run) < NONE, (sched, [(c.round, c.phase, c.included) for c in run.captured])


# --- FedProx's μ: a strategy option the aggregator now sends (issue 28: μ reaches the silo from the
# strategy). What can it combine? Each round is one sum of w·Δ; μ shapes Δ, not what is summed.

def test_the_harness_sees_a_one_silo_sum_of_a_one_phase_strategy():
    run = attack_run(n_silos=4, rounds=1, strategy="fedprox", options={"mu": 0.5})
    c = run.captured[0]
    one = c.included[0]
    x = run.truth[(one, c.instance)]
    run.truth[(one, c.instance + 10_000)] = x
    run.captured.append(type(c)(c.round, 0, c.instance + 10_000, (one,), {fm.key(n, fm.WD): x[n] for n in x},
                                {one: c.public.get(one, {})}))
    assert worst(run) > 0.99


def test_an_honest_fedprox_run_reveals_only_sums_and_every_silo_trains_with_the_rounds_mu():
    run = attack_run(n_silos=4, rounds=2, strategy="fedprox", options={"mu": 0.5})
    assert run.error is None and len(run.history) == 2 and len(run.captured) == 2
    assert worst(run) < NONE
    assert {mu for t in run.trainers.values() for mu in t.prox_mu} == {0.5}


def test_a_mu_equivocated_to_one_silo_unmasks_nothing_and_a_pinned_mu_is_refused():
    from fedalign.fedcmp.pin import StrategyPin

    def tamper(to, msg):  # silo-1 alone is told another μ (the others' sums would hide nothing more)
        if type(msg).__name__ != "RoundStart" or msg.round != 0 or to != "silo-1":
            return msg
        return dataclasses.replace(msg, strategy_options={**msg.strategy_options, "mu": 50.0})

    free = {"strategy": StrategyPin("fedprox", {}, free=("mu",))}
    run = attack_run(n_silos=4, rounds=1, strategy="fedprox", options={"mu": 0.5}, tamper=tamper,
                     silo_policy=free, max_failed_rounds=1)
    assert 50.0 in run.trainers["silo-1"].prox_mu  # the equivocation reached it: the view it signs differs
    assert worst(run) < NONE and not [c for c in run.captured if c.round == 0 and "silo-1" in c.included]
    pinned = {"strategy": StrategyPin("fedprox", {"mu": 0.01})}
    run = attack_run(n_silos=4, rounds=1, strategy="fedprox", options={"mu": 50.0}, silo_policy=pinned,
                     max_failed_rounds=1)
    assert run.error is not None and not run.captured
    assert not any(t.prox_mu for t in run.trainers.values())  # refused before any training
    assert len({r["silo"] for r in run.refusals}) == 4 and all("mu = 50" in r["reason"] for r in run.refusals)


# --- Fed-CMP's residual flush (issue 27 item 3): the run's final round also sums w·e_k, the part of each
# silo's carried update its coefficients leave out, beside those coefficients. Same phase, same set: with
# the coefficients it reveals Σ w·M_k over the round's one set, what a FedAvg round reveals. The harness
# treats each round's input X = w·(Δ + e_prev) as its own unknown; it does not model that e_prev is a
# function of the previous round's X (the aggregator's own view holds only sums over one set per round).

FLUSH = {"error_feedback": True, "flush": True}


def _flushed(run, t):
    return [c for c in run.captured if c.round == t and any(k.endswith("/" + fm.FE) for k in c.sums)]


def test_a_flushing_run_reveals_only_sums():
    run = attack_run(n_silos=4, rounds=2, options=FLUSH)
    assert run.error is None and len(run.history) == 2
    assert _flushed(run, 1) and not _flushed(run, 0)  # the final round's last sum carried the residuals
    assert worst(run) < NONE


def test_the_harness_sees_one_silos_flushed_residual():
    # the harness can fail: the final phase's two keys from one silo alone are its whole input
    run = attack_run(n_silos=4, rounds=1, options=FLUSH)
    c = _flushed(run, 0)[0]
    one = c.included[0]
    x = run.truth[(one, c.instance)]
    u = {n: c.public[one][fm.key(n, fm.U)] for n in x}
    forged = {**{fm.key(n, fm.A): u[n].T @ x[n] for n in x},
              **{fm.key(n, fm.FE): x[n] - u[n] @ (u[n].T @ x[n]) for n in x}}
    run.truth[(one, c.instance + 10_000)] = x
    run.captured.append(type(c)(c.round, c.phase, c.instance + 10_000, (one,), forged, {one: c.public[one]}))
    assert worst(run) > 0.99


def _set_flush(value, rounds=(0,), silos=None):
    def tamper(to, msg):
        if type(msg).__name__ != "RoundStart" or msg.round not in rounds or (silos and to not in silos):
            return msg
        return replace_public(msg, {fm.FLUSH: np.array([value], dtype=np.float32)})
    return tamper


def _flag_every_round(monkeypatch, value):
    """The aggregator's own strategy sets the flag to ``value`` in every round (what it signs and sends)."""
    from fedalign.lab import leakage

    real = leakage.make_strategy

    def make(name, **opts):
        s = real(name, **opts)
        s.round_public = lambda public, final: {**real(name, **opts).round_public(public, True),
                                                fm.FLUSH: torch.tensor([value])}
        return s

    monkeypatch.setattr(leakage, "make_strategy", make)


def test_an_aggregator_that_flushes_every_round_learns_only_sums(monkeypatch):
    # the flag is the aggregator's to set; set in every round, each round's last sum is Σ w·M_k over
    # the round's set (a FedAvg round's worth), never one silo's
    _flag_every_round(monkeypatch, 1.0)
    run = attack_run(n_silos=4, rounds=2, options=FLUSH)
    assert run.error is None and _flushed(run, 0) and _flushed(run, 1)
    assert worst(run) < NONE


def test_a_flush_flag_shown_to_one_silo_only_unmasks_nothing():
    # round 0 of 2 is not the final round: silo-1 alone is told to flush; the signed view differs, so
    # the sum aborts before anything is unmasked
    run = attack_run(n_silos=4, rounds=2, options=FLUSH, tamper=_set_flush(1.0, silos=("silo-1",)),
                     max_failed_rounds=1)
    assert not [c for c in run.captured if c.round == 0 and c.phase == 1]
    assert _abandoned(run) and "aborted" in _abandoned(run)[0]["reason"]
    assert worst(run) < NONE


def test_a_flush_flag_other_than_0_or_1_is_refused(monkeypatch):
    _flag_every_round(monkeypatch, 0.5)
    run = attack_run(n_silos=4, rounds=1, options=FLUSH, max_failed_rounds=1)
    assert not run.captured
    assert run.refusals and all("expected 0 or 1" in r["reason"] for r in run.refusals)


def test_a_flush_flag_sent_to_silos_that_pinned_no_flush_is_refused(monkeypatch):
    from fedalign.fedcmp.pin import StrategyPin

    _flag_every_round(monkeypatch, 1.0)
    # the silos run flush off whatever the options say: their own pinned strategy, told to flush
    pin = StrategyPin("fedcmp", {"rank": 2, "reliability": "off", "error_feedback": True, "flush": False})
    run = attack_run(n_silos=4, rounds=1, options={**FLUSH, "flush": False}, silo_policy={"strategy": pin},
                     max_failed_rounds=1)
    assert not _flushed(run, 0)
    assert run.refusals and all("'flush' is not one this phase uses" in r["reason"] for r in run.refusals)


def test_random_dropout_schedules_with_the_flush_reveal_only_sums():
    rng = random.Random(2712)
    for _ in range(3):
        sched = random_schedule(rng, 5, 2, 2)
        run = attack_run(n_silos=5, rounds=2, options=FLUSH, schedule=sched, declare=random_declare(rng, 5),
                         step_deadline_s=0.4)
        assert worst(run) < NONE, (sched, [(c.round, c.phase, c.included) for c in run.captured])
