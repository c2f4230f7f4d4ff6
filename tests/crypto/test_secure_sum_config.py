"""Config rules: plain mode needs the explicit insecure flag; the flag has no default."""

import numpy as np
import pytest

from fedalign.crypto import (
    EncodingOverflow,
    InsecurePlaintextRefused,
    SecureSumConfig,
    SecureSumUsageError,
    Stage,
    secure_sum_inprocess,
)


def test_plain_mode_is_refused_without_the_flag():
    with pytest.raises(InsecurePlaintextRefused, match="allow_insecure_plaintext=True"):
        SecureSumConfig(mode="plain", threshold=2, clip=1.0, allow_insecure_plaintext=False)


def test_the_flag_has_no_default():
    with pytest.raises(TypeError, match="allow_insecure_plaintext"):
        SecureSumConfig(mode="plain", threshold=2, clip=1.0)


def test_plain_mode_warns_and_sums():
    with pytest.warns(UserWarning, match="INSECURE"):
        cfg = SecureSumConfig(mode="plain", threshold=2, clip=1.0, allow_insecure_plaintext=True)
    rng = np.random.default_rng(0)
    inputs = {f"s{i}": {"x": rng.uniform(-1, 1, (2, 3))} for i in range(3)}
    res = secure_sum_inprocess(inputs, cfg, drop={"s1": Stage.PLAIN_INPUT})
    assert res.included == ("s0", "s2")
    np.testing.assert_allclose(res.sums["x"], inputs["s0"]["x"] + inputs["s2"]["x"])


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "fancy"},
        {"threshold": 0},
        {"threshold": True},
        {"clip": -1.0},
        {"clip": float("nan")},
        {"neighbours": 1},
        {"fractional_bits": 31},
        {"ckks_poly_modulus": 1000},
    ],
)
def test_bad_configs_are_refused(kw):
    base = dict(mode="secagg", threshold=2, clip=1.0, allow_insecure_plaintext=False)
    with pytest.raises(SecureSumUsageError):
        SecureSumConfig(**{**base, **kw})


def test_explicit_fractional_bits_without_headroom_are_refused():
    cfg = SecureSumConfig(mode="secagg", threshold=2, clip=1.0, allow_insecure_plaintext=False, fractional_bits=30)
    with pytest.raises(EncodingOverflow, match="headroom"):
        cfg.frac_bits(3)
    assert SecureSumConfig(mode="secagg", threshold=2, clip=1.0, allow_insecure_plaintext=False).frac_bits(3) == 29
