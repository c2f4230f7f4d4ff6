"""SecAgg end to end: exact sums under every dropout pattern, aborts below t, attacks refused."""

import itertools

import numpy as np
import pytest
from secure_sum_harness import Run

from fedalign.crypto import (
    AGGREGATOR,
    CryptoError,
    SecAggAborted,
    SecureSumConfig,
    SecureSumUsageError,
    Stage,
    secure_sum_inprocess,
)
from fedalign.crypto.messages import EncryptedShares, KeyAdvertisement, UnmaskRequest

SILO_STEPS = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK]


def _inputs(n, seed, shapes=((3, 5), (4,))):
    rng = np.random.default_rng(seed)
    return {
        f"s{i}": {f"t{j}": rng.uniform(-1, 1, shp).astype(np.float32) for j, shp in enumerate(shapes)} for i in range(n)
    }


def _check_sum(res, inputs, cfg):
    n = len(inputs)
    f = cfg.frac_bits(n)
    for name in next(iter(inputs.values())):
        want = sum(inputs[s][name].astype(np.float64) for s in res.included)
        assert res.sums[name].shape == want.shape
        assert np.abs(res.sums[name] - want).max(initial=0.0) <= len(res.included) * 2.0 ** -(f + 1)


@pytest.mark.parametrize("n,t,k,seed", [(2, 2, None, 0), (3, 2, None, 1), (6, 4, None, 2), (9, 3, 3, 3), (12, 4, 4, 4), (7, 3, 2, 5)])
def test_sum_is_exact_up_to_quantization(n, t, k, seed, secagg):
    cfg = secagg(t, neighbours=k)
    inputs = _inputs(n, seed, shapes=((seed + 1, 3), (5,), ()))
    res = secure_sum_inprocess(inputs, cfg, round_id=seed, instance_id=1)
    assert res.included == tuple(sorted(inputs))
    _check_sum(res, inputs, cfg)


def _patterns(n, t):
    """Every pattern that keeps >= t silos (each dropout at any step), then patterns with one
    dropout too many: all of them for n - t + 1 = 2, else those where the extra silos drop at
    one common step (the sum of the others' steps is exercised above)."""
    ids = [f"s{i}" for i in range(n)]
    for r in range(n - t + 2):
        for who in itertools.combinations(ids, r):
            steps = itertools.product(SILO_STEPS, repeat=r) if r <= 2 else ((st,) * r for st in SILO_STEPS)
            for when in steps:
                yield dict(zip(who, when))


def _survivors_ok(n, t, drop):
    # Every step must keep >= t: the survivors of the last step are those never dropped, and
    # each earlier step has at least as many. A silo whose masked input arrived must also sign the
    # consistency step (the survivor list and the round's view): one that goes silent there aborts.
    return n - len(drop) >= t and Stage.CONSISTENCY not in drop.values()


@pytest.mark.parametrize("n,t", [(4, 3), (5, 3)])
def test_every_dropout_pattern(n, t, secagg):
    cfg = secagg(t)
    inputs = _inputs(n, 10 + n, shapes=((6,),))
    runs = aborts = 0
    for drop in _patterns(n, t):
        if _survivors_ok(n, t, drop):
            res = secure_sum_inprocess(inputs, cfg, drop=drop)
            # Silos that dropped before sending their masked input are out; after it, in.
            late = {s for s, st in drop.items() if SILO_STEPS.index(st) >= SILO_STEPS.index(Stage.CONSISTENCY)}
            assert set(res.included) == (set(inputs) - set(drop)) | late
            _check_sum(res, inputs, cfg)
            runs += 1
        else:
            with pytest.raises(SecAggAborted):
                secure_sum_inprocess(inputs, cfg, drop=drop)
            aborts += 1
    assert runs and aborts


def test_secagg_plus_survives_dropouts_outside_a_neighbourhood(secagg):
    cfg = secagg(3, neighbours=4)  # group of 5, t = 3: each group tolerates 2 dropouts
    inputs = _inputs(12, 7)
    graph = cfg.graph(sorted(inputs), 0, 0)
    # Drop two silos that are not neighbours of each other: no group loses more than 2.
    a = "s0"
    b = next(v for v in sorted(inputs) if v != a and v not in graph[a])
    res = secure_sum_inprocess(inputs, cfg, drop={a: Stage.MASKED_INPUT, b: Stage.UNMASK})
    assert a not in res.included and b in res.included
    _check_sum(res, inputs, cfg)


def test_abort_below_threshold_reveals_nothing(secagg):
    run = Run(4, secagg(3))
    out = run.to_agg(run.start())
    out = run.to_agg(run.to_silos(out))
    silent = {"silo0", "silo1"}
    masked = run.to_silos(out, silent=silent)
    with pytest.raises(SecAggAborted):
        run.to_agg(masked)
    assert not run.agg.done
    with pytest.raises(SecAggAborted):
        run.agg.close_step()
    with pytest.raises(SecureSumUsageError):
        run.agg.result


# ---- attacks: each refused with the one opaque CryptoError ------------------------------


def test_tampered_share_is_refused(secagg):
    run = Run(3, secagg(2))
    relays = run.to_agg(run.to_silos(run.to_agg(run.start())))
    dest, relay = relays[0]
    sender = next(iter(relay.shares))
    ct = bytearray(relay.shares[sender])
    ct[40] ^= 1
    forged = type(relay)(**{**relay.fields(), "shares": {**relay.shares, sender: bytes(ct)}})
    with pytest.raises(CryptoError):
        run.silos[dest].handle(forged)
    with pytest.raises(CryptoError):  # and the silo is dead from then on
        run.silos[dest].handle(relay)


def test_share_relayed_to_the_wrong_silo_is_refused(secagg):
    run = Run(3, secagg(2))
    relays = dict(run.to_agg(run.to_silos(run.to_agg(run.start()))))
    # silo0's ciphertext for silo1, presented to silo2 as if silo0 had sent it to silo2.
    from fedalign.crypto.messages import SharesRelay

    shares_for_1 = relays["silo1"].shares
    wrong = SharesRelay(round_id=0, instance_id=0, sender=AGGREGATOR, shares={"silo0": shares_for_1["silo0"], "silo1": relays["silo2"].shares["silo1"]})
    with pytest.raises(CryptoError):
        run.silos["silo2"].handle(wrong)


def test_wrong_signature_is_refused(secagg):
    run = Run(3, secagg(2))
    adverts = run.start()
    s, adv = adverts[0]
    forged = KeyAdvertisement(**{**adv.fields(), "mask_pk": adverts[1][1].mask_pk})
    with pytest.raises(CryptoError):
        run.agg.handle(s, forged)
    # A valid signature by someone else's identity is refused too.
    impostor = KeyAdvertisement(**{**adverts[1][1].fields(), "sender": s})
    with pytest.raises(CryptoError):
        run.agg.handle(s, impostor)
    # The refused messages changed nothing: the real ones still complete the step.
    rosters = run.to_agg(adverts)
    # A key roster whose entry was swapped by the aggregator is refused by the silo.
    dest, roster = rosters[0]
    other = next(v for v in roster.keys if v != dest)
    c, m, sig = roster.keys[other]
    swapped = type(roster)(**{**roster.fields(), "keys": {**roster.keys, other: (c, bytes(32), sig)}})
    with pytest.raises(CryptoError):
        run.silos[dest].handle(swapped)


@pytest.mark.parametrize("change", [{"round_id": 1}, {"instance_id": 1}])
def test_replay_from_another_round_or_instance_is_refused(change, secagg):
    cfg = secagg(2)
    identities = None
    old = Run(3, cfg)
    old_adverts = old.start()
    old_rosters = old.to_agg(old_adverts)
    new = Run(3, cfg, identities=old.identities, **change)
    # An advertisement signed for the old round/instance, with the envelope rewritten.
    s, adv = old_adverts[0]
    with pytest.raises(CryptoError):
        new.agg.handle(s, adv)
    with pytest.raises(CryptoError):
        new.agg.handle(s, KeyAdvertisement(**{**adv.fields(), **change}))
    # An old key roster replayed to a silo of the new instance.
    new.start()
    dest, roster = old_rosters[0]
    with pytest.raises(CryptoError):
        new.silos[dest].handle(type(roster)(**{**roster.fields(), **change}))


def test_replayed_message_within_an_instance_is_refused(secagg):
    run = Run(3, secagg(2))
    adverts = run.start()
    run.agg.handle(*adverts[0])
    with pytest.raises(CryptoError):
        run.agg.handle(*adverts[0])


def _to_unmask(run):
    out = run.to_agg(run.start())
    for _ in range(3):
        out = run.to_agg(run.to_silos(out))
    return out  # UnmaskRequests


def test_unmask_both_seeds_is_refused(secagg):
    run = Run(4, secagg(3))
    reqs = dict(_to_unmask(run))
    req = reqs["silo0"]
    both = UnmaskRequest(**{**req.fields(), "dropped": ("silo1",)})  # silo1 is also a survivor
    with pytest.raises(CryptoError):
        run.silos["silo0"].handle(both)


def test_second_unmask_request_is_refused(secagg):
    run = Run(4, secagg(3))
    out = run.to_agg(run.start())
    out = run.to_agg(run.to_silos(out))
    masked = run.to_silos(out)
    # The aggregator shows the survivors {0,1,2,3}; after the answer it asks again, claiming
    # silo3 dropped, to get silo3's mask key too.
    reqs = dict(run.to_agg(run.to_silos(run.to_agg(masked))))
    first = run.silos["silo0"].handle(reqs["silo0"])
    assert first[0].self_seed_shares and not first[0].mask_key_shares
    again = UnmaskRequest(**{**reqs["silo0"].fields(), "survivors": ("silo0", "silo1", "silo2"), "dropped": ("silo3",)})
    with pytest.raises(CryptoError):
        run.silos["silo0"].handle(again)


def test_unmask_request_without_enough_consistency_signatures_is_refused(secagg):
    run = Run(4, secagg(3))
    req = dict(_to_unmask(run))["silo0"]
    forged_sigs = dict(req.signatures)
    forged_sigs["silo1"] = forged_sigs["silo2"]
    with pytest.raises(CryptoError):
        run.silos["silo0"].handle(UnmaskRequest(**{**req.fields(), "signatures": forged_sigs}))


def test_survivor_list_differs_from_the_signed_one_is_refused(secagg):
    run = Run(4, secagg(3))
    req = dict(_to_unmask(run))["silo0"]
    with pytest.raises(CryptoError):
        run.silos["silo0"].handle(UnmaskRequest(**{**req.fields(), "survivors": ("silo0", "silo1", "silo2"), "dropped": ("silo3",)}))


def test_inputs_outside_the_clip_are_refused(secagg):
    run = Run(3, secagg(2))
    with pytest.raises(SecureSumUsageError, match="clip"):
        run.silos["silo0"].set_inputs({"w": np.full(3, 1.5, np.float32)})


def test_threshold_must_be_a_majority_of_each_group(secagg):
    from fedalign.crypto import Roster, generate_identity

    roster = Roster({f"s{i}": generate_identity().public_bytes for i in range(6)})
    from fedalign.crypto import AggregatorSecureSum

    with pytest.raises(SecureSumUsageError, match="majority"):
        AggregatorSecureSum(roster, 0, 0, secagg(3))
    with pytest.raises(SecureSumUsageError, match="exceeds"):
        AggregatorSecureSum(roster, 0, 0, secagg(7))
    AggregatorSecureSum(roster, 0, 0, secagg(4))


def test_aggregator_rejects_masked_input_with_a_different_layout(secagg):
    run = Run(3, secagg(2))
    masked = run.to_silos(run.to_agg(run.to_silos(run.to_agg(run.start()))))
    run.agg.handle(*masked[0])
    s, m = masked[1]
    bad = type(m)(**{**m.fields(), "shapes": ((5, 3), (4,)), "names": ("b", "w")})
    with pytest.raises(CryptoError):
        run.agg.handle(s, bad)
    run.agg.handle(s, m)  # the good one is still accepted


def test_secagg_plus_every_single_and_paired_dropout(secagg):
    # n = 7, k = 4: groups of 5 with t = 3, so any two dropouts leave every group >= t.
    cfg = secagg(3, neighbours=4)
    inputs = _inputs(7, 21, shapes=((5,),))
    ids = sorted(inputs)
    patterns = [{}] + [{s: st} for s in ids for st in SILO_STEPS]
    patterns += [dict(zip(pair, sts)) for pair in itertools.combinations(ids, 2)
                 for sts in itertools.product([Stage.SHARE_KEYS, Stage.UNMASK], repeat=2)]
    for drop in patterns:
        if Stage.CONSISTENCY in drop.values():  # a survivor that never signs the view ends the sum
            with pytest.raises(SecAggAborted, match="did not sign"):
                secure_sum_inprocess(inputs, cfg, drop=drop)
            continue
        res = secure_sum_inprocess(inputs, cfg, drop=drop)
        late = {s for s, st in drop.items() if SILO_STEPS.index(st) >= SILO_STEPS.index(Stage.CONSISTENCY)}
        assert set(res.included) == (set(ids) - set(drop)) | late
        _check_sum(res, inputs, cfg)


def test_secagg_plus_aborts_when_one_group_falls_below_t(secagg):
    cfg = secagg(3, neighbours=4)
    inputs = _inputs(7, 22, shapes=((5,),))
    victim_group = sorted(cfg.graph(sorted(inputs), 0, 0)["s0"])
    # Three of s0's four neighbours go silent after signing: s0's self-mask seed has only
    # two holders left (s0 and one neighbour), fewer than t = 3.
    drop = {v: Stage.UNMASK for v in victim_group[:3]}
    with pytest.raises(SecAggAborted, match="shares"):
        secure_sum_inprocess(inputs, cfg, drop=drop)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_random_rosters_sum_exactly(data):
    def secagg(t, **kw):
        return SecureSumConfig(mode="secagg", threshold=t, clip=1.0, allow_insecure_plaintext=False, **kw)

    n = data.draw(st.integers(1, 9), label="n")
    k = data.draw(st.one_of(st.none(), st.integers(2, max(2, n - 2))), label="k")
    cfg0 = secagg(1, neighbours=k)
    graph = cfg0.graph([f"s{i}" for i in range(n)], 0, 0)
    lo = max(len(v) for v in graph.values()) + 1
    hi = min(len(v) for v in graph.values()) + 1
    t = data.draw(st.integers(lo // 2 + 1, hi), label="t")
    cfg = secagg(t, neighbours=k)
    shapes = tuple(data.draw(st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), min_size=1, max_size=3), label="shapes"))
    inputs = _inputs(n, data.draw(st.integers(0, 2**16)), shapes=shapes)
    res = secure_sum_inprocess(inputs, cfg, round_id=data.draw(st.integers(0, 10**6)), instance_id=data.draw(st.integers(0, 5)))
    assert res.included == tuple(sorted(inputs))
    _check_sum(res, inputs, cfg)
