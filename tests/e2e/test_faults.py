"""Fault injection over real processes on loopback (small counts; benchmarks/bench_faults.py runs
the full schedule): the aggregator SIGKILLed at steps of a round and restarted, silos killed at
steps of a secure sum and restarted."""

from __future__ import annotations


import pytest

from fedalign.lab.loopback.faults import aggregator_kills, silo_kills

pytestmark = pytest.mark.slow


def test_aggregator_killed_at_commit_steps_loses_nothing(tmp_path):
    # between the checkpoint and the ledger entry (the restart must reconcile the ledger), between
    # the ledger and RoundEnd: the round is durable, nothing is redone, and the run equals an
    # uninterrupted one
    res = aggregator_kills(tmp_path, ["after_checkpoint", "after_ledger"], rounds=3)
    assert res["kills"] == 2
    assert res["rounds_lost"] == 0 and res["corrupt_checkpoints"] == 0
    assert res["ledger_gaps"] == 0 and res["ledger_equals_history"], (res["ledger_rounds"], res["history_rounds"])
    assert res["recovered_ledger_entries"] == 1  # the round committed just before the after_checkpoint kill
    assert res["max_abs_diff_vs_simulator"] < 1e-5  # the same parameters as an uninterrupted run


def test_aggregator_killed_inside_a_sum_loses_no_round_and_reuses_no_input(tmp_path):
    # killed after the masked inputs of phase 0 left, and between the checkpoint's tensors and
    # state.json: the round is redone, but its inputs already went into a sum, so no silo may put
    # them into another one (docs/design.md §5); the silos train it afresh, and the parameters differ from an
    # uninterrupted run by design, while no round, ledger entry or checkpoint is lost
    res = aggregator_kills(tmp_path, ["p0:MaskedInput", "checkpoint_mid"], rounds=3)
    assert res["kills"] == 2
    assert res["rounds_lost"] == 0 and res["corrupt_checkpoints"] == 0
    assert res["ledger_gaps"] == 0 and res["ledger_equals_history"], (res["ledger_rounds"], res["history_rounds"])


def test_silos_killed_in_a_sum_drop_out_or_abandon_the_round(tmp_path):
    # one silo out of four after its shares (excluded), then two at once after their masked inputs of
    # phase 1 (threshold 3: the consistency step cannot complete, the round is abandoned and retried)
    res = silo_kills(tmp_path, [[(1, 0, "EncryptedShares")], [(0, 1, "MaskedInput"), (2, 1, "MaskedInput")]],
                     rounds=3)
    assert res["kill_events"] == 2 and res["silo_kills"] == 3
    assert res["inclusion_ok"], res["inclusion"]
    assert res["sums_below_threshold"] == 0 and res["abandoned_attempts"] >= 1
    assert 3 in res["survivors_per_round"]
    assert res["max_abs_diff_replay"] < 1e-5
    assert res["max_abs_diff_replay_with_dropped"] > 1e-3  # the replay can tell who was summed
