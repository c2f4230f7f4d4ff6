"""Fixed-point encoding in Z_2^32: exact round trips, declared range, headroom."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedalign.crypto.errors import EncodingOverflow
from fedalign.crypto.hazmat.fixedpoint import MAX_SUM, auto_fractional_bits, check_headroom, decode_sum, encode_into


@settings(max_examples=50, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.integers(0, 300), elements=st.floats(-4, 4, width=32)),
    f=st.integers(0, 28),
)
def test_round_trip_within_half_a_step(x, f):
    clip = 4.0
    if 2 * clip * 2**f > MAX_SUM:
        f = 27
    out = np.empty(x.size, np.uint32)
    encode_into(x, out, clip, f)
    assert np.all(np.abs(decode_sum(out, f) - x) <= 2.0 ** -(f + 1))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_sums_mod_2_32_decode_exactly(n, seed):
    rng = np.random.default_rng(seed)
    clip = 2.5
    f = auto_fractional_bits(clip, n)
    xs = rng.uniform(-clip, clip, (n, 50)).astype(np.float32)
    xs[0, :3] = [clip, -clip, 0.0]  # the extremes must fit
    total = np.zeros(50, np.uint32)
    expect = np.zeros(50)
    for row in xs:
        enc = np.empty(50, np.uint32)
        encode_into(row, enc, clip, f)
        total += enc
        expect += decode_sum(enc, f)
    np.testing.assert_array_equal(decode_sum(total, f), expect)
    assert np.all(np.abs(decode_sum(total, f) - xs.astype(np.float64).sum(0)) <= n * 2.0 ** -(f + 1))


@pytest.mark.parametrize("bad", [1.0000001, -3.0, np.inf, np.nan])
def test_values_outside_the_clip_raise(bad):
    x = np.zeros(70000, np.float32)  # beyond one internal chunk
    x[-1] = bad
    with pytest.raises(EncodingOverflow, match="weights"):
        encode_into(x, np.empty(x.size, np.uint32), 1.0, 16, name="weights")


def test_headroom():
    check_headroom(1.0, 20, 2047)
    with pytest.raises(EncodingOverflow, match="headroom"):
        check_headroom(1.0, 20, 2048)
    assert auto_fractional_bits(1.0, 2048) == 19
    with pytest.raises(EncodingOverflow):
        auto_fractional_bits(2.0**31, 2)
