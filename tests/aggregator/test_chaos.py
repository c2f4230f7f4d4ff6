"""Messages delayed, duplicated and reordered both ways between the silos and the aggregator
(in-memory transport, real wire format, SecAgg): the run commits the same parameters."""

from __future__ import annotations

import torch

from fedalign.lab.chaos import chaos_run


def test_delays_duplicates_and_reordering_commit_the_same_parameters():
    ref = chaos_run(chaos=False, rounds=3)
    got = chaos_run(chaos=True, rounds=3, seed=1)
    assert ref["error"] is None and got["error"] is None, got["error"]
    s = got["stats"]
    # the chaos really happened, in both directions
    assert s["sent_duplicated"] > 0 and s["sent_overtaken"] > 0 and s["received_duplicated"] > 0
    assert s["received_delayed"] > 0
    everyone = [f"silo-{i}" for i in range(4)]
    assert got["survivors"] == [everyone] * 3 and not got["sum_failed"]
    for k, v in ref["state"].params.items():
        assert torch.equal(got["state"].params[k], v), k
    # duplicates the silos sent reached the aggregator's secure sum and were refused there
    assert got["rejected"] > 0
