"""Shamir sharing over GF(2^521 - 1): known answers, and hypothesis properties."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedalign.crypto.errors import CryptoError
from fedalign.crypto.hazmat import shamir
from fedalign.crypto.hazmat.shamir import PRIME, combine, split


def _fixed(coeffs):
    it = iter(coeffs)
    return lambda bound: next(it)


def test_known_answer_small_polynomial():
    # f(x) = 1234 + 166 x + 94 x^2 (the textbook example): f(1..6) by hand.
    shares = split((1234).to_bytes(2, "big"), 3, range(1, 7), randbelow=_fixed([166, 94]))
    assert shares == {1: 1494, 2: 1942, 3: 2578, 4: 3402, 5: 4414, 6: 5614}
    assert combine({2: 1942, 4: 3402, 5: 4414}, 3, secret_len=2) == (1234).to_bytes(2, "big")


def test_known_answer_wraps_modulo_the_prime():
    # f(x) = (p - 1) + 2x: f(1) = p + 1 = 1 (mod p), f(2) = 3.
    secret = (PRIME - 1).to_bytes(66, "big")
    assert split(secret, 2, [1, 2], randbelow=_fixed([2])) == {1: 1, 2: 3}
    assert combine({1: 1, 2: 3}, 2, secret_len=66) == secret


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 9),
    data=st.data(),
)
def test_any_t_shares_recover_the_secret(secret, n, data):
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    shares = split(secret, t, xs)
    subset = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=t, max_size=n, unique=True))
    assert combine({x: shares[x] for x in subset}, t) == secret


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), other=st.binary(min_size=32, max_size=32), t=st.integers(2, 6))
def test_fewer_than_t_shares_fit_every_secret(secret, other, t):
    # Perfect secrecy: t-1 shares plus ANY candidate secret define a valid polynomial, so the
    # t-1 shares are consistent with every secret and reveal nothing about which one it is.
    shares = split(secret, t, range(1, t + 1))
    known = sorted(shares.items())[: t - 1]
    # Complete the t-1 known shares with the polynomial through them and (0, other).
    y_t = shamir._lagrange_at(known + [(0, int.from_bytes(other, "big"))], t)
    assert combine(dict(known + [(t, y_t)]), t) == other


def test_too_few_shares_raise():
    shares = split(b"\x01" * 32, 3, [1, 2, 3, 4])
    with pytest.raises(CryptoError):
        combine({1: shares[1], 2: shares[2]}, 3)


def test_inconsistent_extra_share_raises():
    shares = split(b"\x07" * 32, 3, [1, 2, 3, 4, 5])
    assert combine(shares, 3) == b"\x07" * 32
    for bad in shares:
        tampered = dict(shares)
        tampered[bad] = (tampered[bad] + 1) % PRIME
        with pytest.raises(CryptoError):
            combine(tampered, 3)


def test_fresh_randomness_each_split():
    a = split(b"\x00" * 32, 2, [1, 2])
    b = split(b"\x00" * 32, 2, [1, 2])
    assert a != b


def test_share_bytes_round_trip_and_length_check():
    for y in (0, 1, PRIME - 1):
        assert shamir.share_from_bytes(shamir.share_to_bytes(y)) == y
    with pytest.raises(CryptoError):
        shamir.share_from_bytes(b"\x00" * 65)


@pytest.mark.parametrize("t,xs", [(0, [1]), (3, [1, 2]), (2, [1, 1]), (1, [0])])
def test_bad_split_arguments(t, xs):
    with pytest.raises(ValueError):
        split(b"x", t, xs)


def test_every_pair_of_three_recovers():
    shares = split(b"\xab" * 32, 2, [5, 9, 11])
    for a, b in itertools.combinations(shares, 2):
        assert combine({a: shares[a], b: shares[b]}, 2) == b"\xab" * 32
