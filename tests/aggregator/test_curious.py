"""An honest-but-curious aggregator that keeps everything it receives cannot recover a single
silo's update; the same harness does detect recovery when the mask is deliberately weakened."""

from __future__ import annotations

import pytest

import fedalign.crypto.secagg  # noqa: F401
from fedalign.lab.curious import analyse, curious_run, weak_mask
from fedalign import crypto


@pytest.mark.parametrize("strategy,options", [("fedavg", {}), ("fedcmp", {"rank": 4})])
def test_nothing_single_is_recoverable_from_what_the_aggregator_receives(strategy, options):
    res = analyse(curious_run(strategy=strategy, options=options, drop_after_shares="silo-4"))
    assert res["masked_inputs"] >= 8 and res["subsets_checked"] > 0  # 5 + 4 silos, fedcmp twice that
    assert res["max_z_own"] < res["bound"] and res["max_z_subset"] < res["bound"]  # |r|·sqrt(N) < 5
    assert res["max_z_all_before_unmask"] < res["bound"]
    assert res["silos_with_both_secrets_revealed"] == []
    assert res["min_n_silos_in_a_sum"] >= 3 and res["max_err_sum_vs_included"] < 1e-6
    assert res["min_dist_sum_to_single"] > 1e-3
    assert not res["recovered"]


@pytest.mark.parametrize("strategy,options", [("fedavg", {}), ("fedcmp", {"rank": 4})])
def test_the_harness_detects_a_weak_mask(strategy, options, monkeypatch):
    monkeypatch.setattr(crypto.secagg, "apply_masks", weak_mask(24))  # each mask stream: low 24 bits only
    res = analyse(curious_run(strategy=strategy, options=options))
    assert res["recovered"]
    assert res["max_z_own"] > 2 * res["bound"]
    # the sums are still exact: the leak is in the masking, which only this analysis sees
    assert res["max_err_sum_vs_included"] < 1e-6
