"""The round engine over the in-memory transport: secure sums, equality with the simulator,
dropouts during a sum, late messages, too few silos, checkpoint and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedalign.aggregator.checkpoint import CheckpointStore
from fedalign.protocol.errors import InsecureModeRefused, RoundAborted
from fedalign.protocol.messages import SumScheme
from fedalign.fedcmp.strategies import make_strategy
from fedalign.crypto.messages import ConsistencySignature, EncryptedShares, MaskedInput
from fedalign.lab.inprocess import DiesAfter
from fedalign.lab.toy import MAX_WEIGHT, small_toy as toy
from fedalign.lab.toy_federation import attach_toy_reference, run_federation
from fedalign.lab.engine import init_state, run_round
from fedalign.lab.sums import plain_sum_insecure


def _reference(strategy, options, n_silos, rounds):
    """The simulator over the same toy and weights, with exact (plain) sums."""
    fed = toy(n_silos)
    strat = make_strategy(strategy, **options)
    attach_toy_reference(strat, fed)
    st = init_state(strat, fed.init_params(), n_silos)
    for r in range(rounds):
        res = [fed.local_update(st.params, k, r, 0.0) for k in range(n_silos)]
        w = [min(x.n_samples, MAX_WEIGHT) / MAX_WEIGHT for x in res]
        st, _ = run_round(strat, st, [x.delta for x in res], w, plain_sum_insecure, final=r == rounds - 1)
    return st.params


@pytest.mark.parametrize("strategy,options", [("fedcmp", {"rank": 2}), ("fedavg", {})])
def test_secagg_run_equals_the_simulator(strategy, options):
    res = run_federation(3, rounds=2, strategy=strategy, options=options)
    assert res.error is None, res.error
    assert all(not isinstance(o, BaseException) for o in res.silos.values()), res.silos
    ref = _reference(strategy, options, 3, 2)
    for k in ref:
        torch.testing.assert_close(res.state.params[k], ref[k], atol=1e-5, rtol=1e-4)
    # silos end with the aggregator's final parameters
    for o in res.silos.values():
        torch.testing.assert_close(o.params["weight"], res.state.params["weight"])
        assert o.rounds_done == 2 and o.committed == [0, 1]
    # the payload the aggregator counted is exactly the contribution spec, as uint32 (Fed-CMP's final
    # round also carries the flushed residuals)
    strat = make_strategy(strategy, **options)
    for t, rec in enumerate(res.state.history):
        pub = strat.round_public({}, final=t == len(res.state.history) - 1)
        expect = 4 * sum(int(np.prod(s)) for ph in range(strat.n_phases)
                         for s in strat.contribution_spec(ph, res.state.params, pub).values())
        assert set(rec["payload_bytes"].values()) == {expect}
        assert all(rec["wire_up_bytes"][s] > expect for s in rec["survivors"])


def test_plain_sums_need_the_insecure_permission():
    with pytest.raises(InsecureModeRefused):
        run_federation(3, rounds=1, scheme=SumScheme.PLAIN_INSECURE, policy_overrides={"allow_insecure_plaintext": False})


def test_plain_sums_are_refused_by_a_silo_without_permission():
    res = run_federation(3, rounds=1, scheme=SumScheme.PLAIN_INSECURE, silo_policy={"allow_insecure_plaintext": False},
                         policy_overrides={"max_failed_rounds": 1, "roster_wait_s": 2})
    assert isinstance(res.error, RoundAborted)
    assert all(isinstance(o, InsecureModeRefused) for o in res.silos.values()), res.silos


def _check_sum(res, phase, members, which: int = 0):
    """The ``which``-th sum of ``phase`` the strategy was handed equals the sum of ``members``' inputs."""
    ph, sums = [x for x in res.strategy.sums if x[0] == phase][which]
    assert sums.n_silos == len(members)
    for name, got in sums.tensors.items():
        want = sum(res.contributions[(0, phase, s)][name] for s in members)
        # fixed point: 2^-f per value and silo, f >= 24 for clip 16 and 4 silos
        np.testing.assert_allclose(got.double().numpy(), want, atol=len(members) * 2.0**-24 * 2, rtol=1e-6)


def test_silo_dying_before_its_masked_input_in_phase_0_is_left_out_exactly():
    victim = "silo-2"
    wrap = (lambda name, c, net: DiesAfter(c, net, EncryptedShares, 0) if name == victim else c)
    res = run_federation(4, rounds=1, strategy="fedcmp", options={"rank": 2}, wrap_client=wrap)
    assert res.error is None, res.error
    rec = res.state.history[0]
    assert rec["survivors"] == ["silo-0", "silo-1", "silo-3"] and victim in rec["dropped"]
    for phase in (0, 1):  # phase 1 summed exactly the set phase 0 summed
        _check_sum(res, phase, rec["survivors"])
    # its shares were used to remove its pairwise masks: the sum without it is still exact
    ph, sums = [x for x in res.strategy.sums if x[0] == 0][0]
    name = next(iter(sums.tensors))
    assert np.abs(res.contributions[(0, 0, victim)][name]).max() > 1e-4  # it had something to add
    assert any(e["event"] == "step_deadline" for e in res.events)


@pytest.mark.parametrize("kind,phase", [(ConsistencySignature, 0), (EncryptedShares, 1), (MaskedInput, 1)])
def test_a_silo_lost_after_phase_0_abandons_the_round(kind, phase):
    # one participant set per round: were phase 1 summed without the silo phase 0 summed, the two sums
    # would give its update back ((1+κ)·Uᵀ·ΣP − (ΣRA + κ·ΣA)·Q on the old code). The round is abandoned,
    # nothing of it is handed to the strategy, and the retry commits over the others on fresh shards.
    victim = "silo-2"
    wrap = (lambda name, c, net: DiesAfter(c, net, kind, phase) if name == victim else c)
    res = run_federation(4, rounds=1, strategy="fedcmp", options={"rank": 2}, wrap_client=wrap)
    assert res.error is None, res.error
    abandoned = [e for e in res.events if e["event"] == "round_abandoned"]
    assert abandoned and abandoned[0]["round"] == 0
    rec = res.state.history[0]
    assert rec["survivors"] == ["silo-0", "silo-1", "silo-3"]
    # the strategy saw phase 0 of the abandoned attempt (over four) and then only the retry's two phases
    assert [(ph, s.n_silos) for ph, s in res.strategy.sums] == [(0, 4), (0, 3), (1, 3)]
    for phase in (0, 1):
        _check_sum(res, phase, rec["survivors"], which=-1)


def test_silo_dying_after_it_signed_is_still_summed_exactly():
    # Bonawitz et al.: a masked input that arrived and whose survivor list was signed counts; the
    # survivors reveal its self-mask seed (a one-phase strategy: nothing later needs it).
    victim = "silo-2"
    wrap = (lambda name, c, net: DiesAfter(c, net, ConsistencySignature, 0) if name == victim else c)
    res = run_federation(4, rounds=1, strategy="fedavg", wrap_client=wrap)
    assert res.error is None, res.error
    assert res.state.history[0]["survivors"] == ["silo-0", "silo-1", "silo-2", "silo-3"]
    _check_sum(res, 0, ["silo-0", "silo-1", "silo-2", "silo-3"])


def test_silo_silent_at_the_consistency_step_ends_that_sum():
    # its masked input arrived, but it never signed the survivor list and view: nothing is unmasked
    victim = "silo-2"
    wrap = (lambda name, c, net: DiesAfter(c, net, MaskedInput, 0) if name == victim else c)
    res = run_federation(4, rounds=1, strategy="fedavg", wrap_client=wrap)
    assert res.error is None, res.error
    assert any(e["event"] == "round_abandoned" and "did not sign" in e["reason"] for e in res.events)
    assert res.state.history[0]["survivors"] == ["silo-0", "silo-1", "silo-3"]


def test_too_few_silos_abandon_the_round():
    res = run_federation(2, rounds=1, policy_overrides={"roster_wait_s": 1.0})
    assert isinstance(res.error, RoundAborted) and "only 2 silo(s) live" in str(res.error)


class Replayer:
    """Resends its round-0 UpdateReady during round 1: the aggregator must log and ignore it."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.traffic = inner, inner.name, inner.traffic
        self.saved = None

    def send(self, env):
        from fedalign.protocol.messages import UpdateReady

        if isinstance(env.message, UpdateReady):
            if env.round == 0:
                self.saved = env
            elif self.saved is not None:
                self.inner.send(self.saved)
        return self.inner.send(env)

    def recv(self, t):
        return self.inner.recv(t)

    def close(self):
        self.inner.close()


def test_late_message_from_a_closed_round_is_ignored_and_logged():
    res = run_federation(3, rounds=2, options={"rank": 2},
                         wrap_client=lambda n, c, net: Replayer(c) if n == "silo-0" else c)
    assert res.error is None and res.state.round == 2
    late = [e for e in res.events if e["event"] == "late_message_ignored" and e["type"] == "UpdateReady"]
    assert late and late[0]["silo"] == "silo-0" and late[0]["round"] == 0


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    from fedalign.crypto.identity import generate_identity

    names = [f"silo-{i}" for i in range(3)]
    ids = {s: generate_identity() for s in names}
    # the first part is a complete 2-round run that the second extends to 3, so no flush: the first run's
    # final round would flush (the loopback kill tests resume mid-run with the flush on)
    opts = {"rank": 2, "flush": False}
    straight = run_federation(3, rounds=3, options=opts, names=names, identities=ids)
    first = run_federation(3, rounds=2, options=opts, tmp=tmp_path, names=names, identities=ids)
    assert first.error is None
    saved = CheckpointStore(tmp_path / "ckpt").load()
    assert saved.round == 2 and len(saved.history) == 2
    second = run_federation(3, rounds=3, options=opts, tmp=tmp_path, state=saved, names=names, identities=ids)
    assert second.error is None and second.state.round == 3
    for k in straight.state.params:
        torch.testing.assert_close(second.state.params[k], straight.state.params[k], atol=1e-6, rtol=1e-5)
    # the silos' error-feedback state came back from disk, not from zero
    assert any(e["event"] == "silo_started" and e["committed_round"] == 1 for e in second.events)


def test_ckks_run_equals_the_simulator():
    res = run_federation(3, rounds=1, strategy="fedavg", scheme=SumScheme.CKKS,
                         policy_overrides={"ckks_poly_modulus": 8192})
    assert res.error is None, res.error
    ref = _reference("fedavg", {}, 3, 1)
    for k in ref:
        torch.testing.assert_close(res.state.params[k], ref[k], atol=1e-4, rtol=1e-3)


class DiesOnRoundEnd:
    """Goes silent for good once round 0 is over (after its RoundEnd arrived)."""

    def __init__(self, inner, net) -> None:
        self.inner, self.net, self.name, self.traffic = inner, net, inner.name, inner.traffic

    def send(self, env):
        return self.inner.send(env)

    def recv(self, t):
        from fedalign.protocol.messages import RoundEnd

        env = self.inner.recv(t)
        if env is not None and isinstance(env.message, RoundEnd):
            self.net.disconnect(self.name)
        return env

    def close(self):
        self.inner.close()


def test_a_silo_silent_during_training_is_dropped_for_silence():
    res = run_federation(4, rounds=2, options={"rank": 2}, policy_overrides={"heartbeat_timeout_s": 1.0},
                         wrap_client=lambda n, c, net: DiesOnRoundEnd(c, net) if n == "silo-3" else c)
    assert res.error is None, res.error
    # it was alive a moment before round 1 started, so it is on the roster; it stops heartbeating
    # during local training and is dropped for silence (not at the training deadline)
    drops = [e for e in res.events if e["event"] == "dropouts" and e["round"] == 1]
    assert drops and drops[0]["stage"] == "train" and drops[0]["silent"] == ["silo-3"]
    assert res.state.history[1]["survivors"] == ["silo-0", "silo-1", "silo-2"]


class DropsOnce:
    """Loses its first message of type ``kind`` (a network hiccup), then behaves."""

    def __init__(self, inner, kind: type) -> None:
        self.inner, self.kind, self.name, self.traffic = inner, kind, inner.name, inner.traffic
        self.dropped = False

    def send(self, env):
        if isinstance(env.message, self.kind) and not self.dropped:
            self.dropped = True
            return 0
        return self.inner.send(env)

    def recv(self, t):
        return self.inner.recv(t)

    def close(self):
        self.inner.close()


def test_an_update_that_went_into_an_aborted_sum_is_never_reused():
    # silo-0's consistency signature is lost: 2 of 3 answer, threshold 3, the sum aborts after
    # every masked input arrived. The retried round must use fresh updates, not the exposed ones
    # (two sums over the same inputs and different silo sets would reveal a difference).
    from fedalign.crypto.messages import ConsistencySignature

    res = run_federation(3, rounds=1, options={"rank": 2},
                         wrap_client=lambda n, c, net: DropsOnce(c, ConsistencySignature) if n == "silo-0" else c)
    assert res.error is None, res.error
    assert any(e["event"] == "round_abandoned" for e in res.events)
    for s in ("silo-0", "silo-1", "silo-2"):
        mine = [e["event"] for e in res.events if e["source"] == s]
        assert mine.count("training_started") == 2 and "update_reused" not in mine, (s, mine)


class _BadEpsilon:
    """A silo client that reports a NaN ε in UpdateReady (a malformed or hostile report)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def send(self, env):
        from dataclasses import replace

        from fedalign.protocol.messages import UpdateReady

        if isinstance(env.message, UpdateReady):
            bad = replace(env.message)
            object.__setattr__(bad, "epsilon", float("nan"))  # past the constructor's own check
            env = replace(env, message=bad)
        return self.inner.send(env)

    def recv(self, t):
        return self.inner.recv(t)

    def close(self):
        self.inner.close()


def test_a_nan_epsilon_never_reaches_a_committed_round():
    # Before: NaN ε entered the round record (and broke the ledger append after the checkpoint).
    res = run_federation(4, rounds=1, options={"rank": 2}, policy_overrides={"train_deadline_s": 4},
                         wrap_client=lambda n, c, net: _BadEpsilon(c) if n == "silo-3" else c)
    assert res.error is None and res.state.round == 1
    rec = res.state.history[-1]
    assert "silo-3" not in rec["survivors"] and "silo-3" not in rec["epsilon"]
    assert all(v == v for v in rec["epsilon"].values())  # no NaN anywhere
    assert any(e["event"] == "message_dropped" for e in res.events)


def test_ledger_heads_are_witnessed_both_ways_and_a_cut_silo_ledger_fails_verify(tmp_path):
    # docs/design.md §10: each RoundStart carries the aggregator's head, each UpdateReady the silo's signed
    # head; each side records the other's. Deleting a silo's newest ledger entries (say, its last
    # DP charge) then fails `audit verify --witness-ledger`, naming where the ledger ends.
    from typer.testing import CliRunner

    from fedalign.host.audit_cli import make_audit_app
    from fedalign.compliance.witness import witnessed_heads

    res = run_federation(3, rounds=2, options={"rank": 2}, ledger_dir=tmp_path)
    assert res.error is None and res.state.round == 2
    agg = tmp_path / "aggregator.jsonl"
    # one signed head per round's UpdateReady, and the final one (LedgerClose) the aggregator receipted
    assert len(witnessed_heads(agg, "silo-0")) == 3
    assert len(witnessed_heads(tmp_path / "silo-0.jsonl", "aggregator")) >= 2

    app = make_audit_app("silo", lambda c: c)
    ok = CliRunner().invoke(app, ["verify", str(tmp_path / "silo-0.jsonl"), "--witness-ledger", str(agg),
                                  "--node", "silo-0"])
    assert ok.exit_code == 0, ok.output
    lines = (tmp_path / "silo-0.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "silo-0.jsonl").write_text("".join(lines[:-1]))  # the newest entry deleted at a line boundary
    # the chain alone was blind to it (3c16410); now the run's tail has no closing receipt: unwitnessed
    alone = CliRunner().invoke(app, ["verify", str(tmp_path / "silo-0.jsonl")])
    assert alone.exit_code == 11 and "UNWITNESSED TAIL" in alone.output, alone.output
    cut = CliRunner().invoke(app, ["verify", str(tmp_path / "silo-0.jsonl"), "--witness-ledger", str(agg),
                                   "--node", "silo-0"])
    assert cut.exit_code == 11 and "deleted" in cut.output, cut.output


@pytest.mark.parametrize("scheme", [SumScheme.PLAIN_INSECURE, SumScheme.CKKS])
def test_a_multi_phase_round_commits_under_every_scheme(scheme):
    # every later phase must name the set phase 0 summed: the silo learns it from the sum itself, at
    # the unmask step (secagg), once its encrypted input left (ckks, no dropouts), or at once (plain)
    if scheme == SumScheme.CKKS:
        pytest.importorskip("tenseal")
    res = run_federation(3, rounds=1, strategy="fedcmp", options={"rank": 2}, scheme=scheme)
    assert res.error is None, res.error
    assert res.state.history[0]["survivors"] == ["silo-0", "silo-1", "silo-2"]
    assert [ph for ph, _ in res.strategy.sums] == [0, 1]
