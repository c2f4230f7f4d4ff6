"""scripts/dp_table.py's must-show check: one DP configuration must reach the bar on every seed, and a
seed that clears it by less than the spread between DP runs is called not robust."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("dp_table", Path(__file__).parents[2] / "scripts" / "dp_table.py")
dp_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dp_table)

REF = {s: {"nll_cut": 0.4} for s in (0, 1, 2)}


def _runs(*cuts):
    return {s: {"nll_cut": c} for s, c in enumerate(cuts)}


def test_three_methods_each_good_on_one_seed_do_not_meet_the_bar():
    by = {("label", "DP FedAvg eps=8"): _runs(0.39, 0.10, 0.10),
          ("label", "DP FedAvgM β=0.5 eps=8"): _runs(0.10, 0.39, 0.10),
          ("label", "DP Fed-CMP r=32 OPM β=0.5 eps=8 [16 passes]"): _runs(0.10, 0.10, 0.39),
          ("label", "DP FedAvg eps=2"): _runs(0.39, 0.39, 0.39)}  # another ε: not a candidate at ε=8
    line = dp_table._bar_check("label", 8, 0.75, by, REF)
    assert "**not met**" in line


def test_one_configuration_over_the_bar_on_every_seed_is_named():
    by = {("label", "DP FedAvg eps=8"): _runs(0.39, 0.20, 0.39),
          ("label", "DP FedAvgM β=0.5 eps=8 [16 passes]"): _runs(0.38, 0.36, 0.37),
          ("label", "DP FedAvgM β=0.5 eps=8 [32 passes]"): _runs(0.40, 0.40)}  # 2 seeds: ranked after 3
    line = dp_table._bar_check("label", 8, 0.75, by, REF)
    assert "DP FedAvgM β=0.5 eps=8 [16 passes]" in line and line.endswith("**met**")


def test_a_bar_cleared_inside_the_run_spread_is_not_robust():
    by = {("label", "DP FedAvgM β=0.5 eps=2 [16 passes]"): _runs(0.30, 0.21, 0.30)}  # bar: cut 0.20
    line = dp_table._bar_check("label", 2, 0.5, by, REF)
    assert "**met**" in line and "0.010 NLL above the bar" in line and "not robust" in line
    by = {("label", "DP FedAvg eps=2"): _runs(0.30, 0.19, 0.30)}
    line = dp_table._bar_check("label", 2, 0.5, by, REF)
    assert "**not met**" in line and "below the bar" in line
