"""The dp family's must-show check: one DP configuration must reach the bar on every seed, and a
seed that clears it by less than the spread between DP runs is called not robust."""

from fedalign.lab.experiments import dp as dp_table
from fedalign.lab.tables import load_runs

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


def test_pooled_and_shard_runs_are_separate_configurations(tmp_path):
    import json

    base = {"method": "fedavgm", "strategy": "fedavgm-b0.5", "eps": 2.0, **dp_table.RECIPE}
    runs = [dict(base), dict(base, local_epochs=16), dict(base, local_epochs=16, sampling="pooled"),
            dict(base, sampling="pooled"), dict(base, sampling="pooled", public_warm_start=8)]
    lines = [json.dumps({"config": c, "data": dict(dp_table.DATA, scenario="label", seed=1), "nll": 0.8,
                         "nll_cut": 0.2}) for c in runs]
    (tmp_path / "label-s1.jsonl").write_text("\n".join(lines) + "\n")
    names = [r["name"] for r in dp_table._table_rows(load_runs(tmp_path))]
    assert names == ["DP FedAvgM β=0.5 eps=2", "DP FedAvgM β=0.5 eps=2 [16 passes]",
                     "DP FedAvgM β=0.5 eps=2 [pooled, 16 passes]", "DP FedAvgM β=0.5 eps=2 [pooled, 8 passes]"]


def test_grid_moves_only_the_dp_rows_off_the_schedule():
    cfgs = dp_table.grid([2.0], ["fedavg"], passes=16, sampling="pooled")
    ref, dp = cfgs
    assert "sampling" not in ref and "local_epochs" not in ref  # the no-DP reference keeps its recipe
    assert dp["sampling"] == "pooled" and dp["local_epochs"] == 16
    assert dp["name"] == "DP FedAvg eps=2 [pooled, 16 passes]"
    assert dp_table.grid([2.0], ["fedavg"])[1]["name"] == "DP FedAvg eps=2"
    import pytest

    from fedalign.protocol.errors import ConfigError

    with pytest.raises(ConfigError):
        dp_table.grid([2.0], ["fedavg"], sampling="whole")


def test_coverage_names_each_missing_cell_and_its_seeds():
    full = {0: {}, 1: {}, 2: {}}
    by = {(sc, name): dict(full) for sc in ("label", "domain", "style", "unreliable")
          for name in [dp_table.REFERENCE] + [f"{dp_table.label(m)} eps={e}" for m in ("fedavg", "fedavgm", "fedcmp")
                                              for e in (1, 2, 4, 8)]}
    by[("style", "DP Fed-CMP r=32 OPM β=0.5 eps=4")] = {0: {}}
    by[("label", "DP FedAvg eps=1 [pooled, 16 passes]")] = dict(full)  # another schedule: not a grid cell
    del by[("label", "DP FedAvg eps=1")]
    lines = dp_table._coverage(by)
    assert lines[0].startswith("151 of 156 cells")
    assert "- label: missing DP FedAvg eps=1 (seeds 0, 1, 2)" in lines
    assert "- style: missing DP Fed-CMP r=32 OPM β=0.5 eps=4 (seeds 1, 2)" in lines
    assert "- domain: complete" in lines


def test_fedcmp_must_show_needs_no_loss_and_wins_in_two_scenarios():
    assert dp_table._fedcmp_verdict([]) is None
    wins_one = [("label", "beats"), ("domain", "ties"), ("label", "beats")]
    assert "**not met**" in dp_table._fedcmp_verdict(wins_one)
    wins_two = wins_one + [("style", "beats")]
    assert "**met** (loses in 0 of 4 cells, beats in 2" in dp_table._fedcmp_verdict(wins_two)
    assert "**not met** (loses in 1 of 5" in dp_table._fedcmp_verdict(wins_two + [("unreliable", "loses to")])
