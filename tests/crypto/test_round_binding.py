"""The secure sum's part in "one view per round" and "one participant set per round".

A multi-phase round is safe only if every silo computed its input under the same public values
and every later phase sums exactly the set phase 0 summed. The secure sum enforces both without
knowing what a view holds: silos sign ``config.view`` in the consistency step (secagg) or with
their encrypted input (ckks), and ``allow_dropouts=False`` makes a sum over anything less than
its whole roster impossible, at every step, with no mask-key share ever revealed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedalign.crypto import SecureSumConfig
from fedalign.crypto.errors import CryptoError, SecAggAborted
from fedalign.crypto.inprocess import secure_sum_inprocess
from fedalign.crypto.messages import Stage

SILO_STEPS = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK]


def _inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return {f"s{i}": {"x": rng.uniform(-1, 1, size=(7,))} for i in range(n)}


def _cfg(mode="secagg", **kw):
    base = dict(mode=mode, threshold=3, clip=4.0, allow_insecure_plaintext=False, view=b"view-A")
    base.update(kw)
    return SecureSumConfig(**base)


def test_the_same_view_sums():
    inputs = _inputs(4)
    res = secure_sum_inprocess(inputs, _cfg())
    want = sum(v["x"] for v in inputs.values())
    assert np.allclose(res.sums["x"], want, atol=1e-4)


@pytest.mark.parametrize("victim", ["s0", "s2"])
def test_one_silo_shown_another_view_gets_nothing_summed(victim):
    # the aggregator showed one silo other public values: that silo signed another view, so no
    # silo of its group reveals a share and the sum never unmasks (on the old code it did)
    inputs = _inputs(4, 1)
    cfg = _cfg()
    with pytest.raises((CryptoError, SecAggAborted)):
        secure_sum_inprocess(inputs, cfg, silo_configs={victim: dataclasses.replace(cfg, view=b"view-B")})


def test_the_aggregator_must_hold_every_survivors_signature():
    # a survivor that never signs (silent at the consistency step) ends the sum: its masked input is in
    # the total under a view nobody checked
    with pytest.raises(SecAggAborted, match="did not sign"):
        secure_sum_inprocess(_inputs(5, 2), _cfg(threshold=3), drop={"s1": Stage.CONSISTENCY})


@pytest.mark.parametrize("step", SILO_STEPS)
def test_no_dropouts_means_no_sum_with_a_silo_missing(step):
    cfg = _cfg(allow_dropouts=False)
    inputs = _inputs(4, 3)
    if step == Stage.UNMASK:
        # one silo silent at the last step: the others' shares still unmask the sum (its input is in it)
        res = secure_sum_inprocess(inputs, cfg, drop={"s3": step})
        assert res.included == tuple(sorted(inputs))
        return
    with pytest.raises(SecAggAborted):
        secure_sum_inprocess(inputs, cfg, drop={"s3": step})


def test_with_dropouts_allowed_the_same_pattern_sums_the_rest():
    # the contrast (phase 0 of a round): a silo silent before its masked input is simply left out
    res = secure_sum_inprocess(_inputs(4, 3), _cfg(), drop={"s3": Stage.MASKED_INPUT})
    assert res.included == ("s0", "s1", "s2")


def test_a_silo_never_reveals_a_mask_key_share_when_dropouts_are_not_allowed():
    from fedalign.crypto.identity import Roster, generate_identity
    from fedalign.crypto.messages import UnmaskRequest
    from fedalign.crypto.secure_sum import AggregatorSecureSum, SiloSecureSum

    ids = ["s0", "s1", "s2", "s3"]
    keys = {s: generate_identity() for s in ids}
    roster = Roster({s: keys[s].public_bytes for s in ids})
    cfg = _cfg(allow_dropouts=False)
    agg = AggregatorSecureSum(roster, 0, 0, cfg)
    silos = {s: SiloSecureSum(keys[s], s, roster, 0, 0, cfg) for s in ids}
    inputs = _inputs(4, 4)
    out = []
    for s in ids:
        silos[s].set_inputs(inputs[s])
        out += [(s, m) for m in silos[s].start()]
    while True:
        nxt = []
        for s, m in out:
            nxt += agg.handle(s, m)
        if not nxt or isinstance(nxt[0][1], UnmaskRequest):
            break
        out = [(d, r) for d, m in nxt for r in silos[d].handle(m)]
    assert nxt and isinstance(nxt[0][1], UnmaskRequest)
    # a malicious aggregator re-labels s3 as dropped to learn its pairwise key: refused
    d, req = nxt[0]
    forged = dataclasses.replace(req, survivors=tuple(x for x in req.survivors if x != "s3"), dropped=("s3",))
    with pytest.raises(CryptoError):
        silos[d].handle(forged)


def test_ckks_decryptor_checks_every_included_silos_view():
    pytest.importorskip("tenseal")
    inputs = _inputs(3, 5)
    cfg = _cfg("ckks", threshold=2)
    res = secure_sum_inprocess(inputs, cfg)
    assert np.allclose(res.sums["x"], sum(v["x"] for v in inputs.values()), atol=1e-3)
    with pytest.raises((CryptoError, SecAggAborted)):
        secure_sum_inprocess(inputs, cfg, silo_configs={"s2": dataclasses.replace(cfg, view=b"other")})


def test_ckks_without_dropouts_refuses_a_partial_sum():
    pytest.importorskip("tenseal")
    with pytest.raises(SecAggAborted):
        secure_sum_inprocess(_inputs(3, 6), _cfg("ckks", threshold=2, allow_dropouts=False),
                             drop={"s2": Stage.ENCRYPTED_INPUT})
