"""CKKS mode: sums within CKKS precision under dropouts; the sealed context and decryption
are refused when tampered with or asked twice."""

import numpy as np
import pytest
from secure_sum_harness import Run

from fedalign.crypto import CryptoError, SecAggAborted, SecureSumConfig, Stage, secure_sum_inprocess
from fedalign.crypto.messages import CkksContextRelay, CkksDecryptRequest


def _cfg(t=2):
    return SecureSumConfig(mode="ckks", threshold=t, clip=1.0, allow_insecure_plaintext=False)


def _inputs(n, size):
    rng = np.random.default_rng(n)
    return {f"s{i}": {"v": rng.uniform(-1, 1, size).astype(np.float32), "m": rng.uniform(-1, 1, (2, 2))} for i in range(n)}


@pytest.mark.parametrize("drop", [{}, {"s0": Stage.ENCRYPTED_INPUT}, {"s2": Stage.ADVERTISE_KEYS}, {"s3": Stage.DECRYPT}])
def test_sum_with_dropouts(drop):
    inputs = _inputs(4, 5000)  # two chunks of <= 4096 slots
    res = secure_sum_inprocess(inputs, _cfg(), drop=drop)
    gone = {s for s, st in drop.items() if st in (Stage.ADVERTISE_KEYS, Stage.ENCRYPTED_INPUT)}
    assert set(res.included) == set(inputs) - gone
    for name in ("v", "m"):
        want = sum(inputs[s][name].astype(np.float64) for s in res.included)
        assert np.abs(res.sums[name] - want).max() < 1e-5


def test_abort_below_threshold():
    with pytest.raises(SecAggAborted):
        secure_sum_inprocess(_inputs(3, 10), _cfg(3), drop={"s1": Stage.ENCRYPTED_INPUT})


def test_leader_dropping_aborts():
    with pytest.raises(SecAggAborted):
        secure_sum_inprocess(_inputs(3, 10), _cfg(2), drop={"s0": Stage.SHARE_CONTEXT})


def _to_relays():
    run = Run(3, _cfg())
    out = run.to_agg(run.start())  # KeyRoster to the leader
    return run, dict(run.to_agg(run.to_silos(out)))


def test_tampered_secret_context_is_refused():
    run, relays = _to_relays()
    r = relays["silo1"]
    ct = bytearray(r.secret_context)
    ct[100] ^= 0x10
    with pytest.raises(CryptoError):
        run.silos["silo1"].handle(CkksContextRelay(**{**r.fields(), "secret_context": bytes(ct)}))


def test_secret_context_sealed_to_another_silo_is_refused():
    run, relays = _to_relays()
    wrong = CkksContextRelay(**{**relays["silo1"].fields(), "secret_context": relays["silo2"].secret_context})
    with pytest.raises(CryptoError):
        run.silos["silo1"].handle(wrong)


def test_decrypts_once_and_only_for_enough_silos():
    run, relays = _to_relays()
    inputs = run.to_silos(list(relays.items()))
    [(dest, req)] = run.to_agg(inputs)
    few = CkksDecryptRequest(**{**req.fields(), "included": (dest,)})
    with pytest.raises(CryptoError):
        run.silos[dest].handle(few)
    run2, relays2 = _to_relays()
    [(dest2, req2)] = run2.to_agg(run2.to_silos(list(relays2.items())))
    run2.silos[dest2].handle(req2)
    with pytest.raises(CryptoError):
        run2.silos[dest2].handle(req2)
