"""Shamir secret sharing over the prime field GF(2^521 - 1) (our own implementation).

A secret of up to 65 bytes is one field element; ``split`` evaluates a random polynomial of
degree t-1 with the secret as constant term at nonzero points x; ``combine`` interpolates at
0 from the first t shares and checks every further share lies on the same polynomial.
"""

from __future__ import annotations

import secrets
from typing import Callable, Iterable, Sequence

from fedalign.crypto.errors import CryptoError

__all__ = ["PRIME", "SHARE_BYTES", "split", "combine", "share_to_bytes", "share_from_bytes"]

PRIME = 2**521 - 1  # a Mersenne prime
SHARE_BYTES = 66  # ceil(521 / 8)


def _poly_eval(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % PRIME
    return acc


def split(
    secret: bytes,
    threshold: int,
    xs: Iterable[int],
    *,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> dict[int, int]:
    """Shares {x: f(x)} of ``secret`` such that any ``threshold`` of them recover it.

    ``randbelow`` draws the polynomial's coefficients; the default is the OS CSPRNG and only
    known-answer tests pass anything else.
    """
    xs = list(xs)
    value = int.from_bytes(secret, "big")
    if value >= PRIME:
        raise ValueError("secret does not fit the field (at most 65 bytes, value < 2^521 - 1)")
    if threshold < 1 or threshold > len(xs):
        raise ValueError(f"threshold {threshold} must be in 1..{len(xs)} (the number of shares)")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and nonzero")
    coeffs = [value] + [randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _poly_eval(coeffs, x) for x in xs}


def _lagrange_at(points: Sequence[tuple[int, int]], at: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: dict[int, int], threshold: int, secret_len: int = 32) -> bytes:
    """Recover the secret from at least ``threshold`` shares.

    Raises :class:`CryptoError` when there are too few shares, when a share is out of range,
    or when the shares beyond the first ``threshold`` do not lie on their polynomial.
    """
    items = sorted(shares.items())
    if threshold < 1 or len(items) < threshold:
        raise CryptoError("not enough shares")
    if any(not (0 < x < PRIME and 0 <= y < PRIME) for x, y in items):
        raise CryptoError("share out of range")
    base, extra = items[:threshold], items[threshold:]
    for x, y in extra:
        if _lagrange_at(base, x) != y:
            raise CryptoError("inconsistent shares")
    secret = _lagrange_at(base, 0)
    if secret >= 1 << (8 * secret_len):
        raise CryptoError("inconsistent shares")
    return secret.to_bytes(secret_len, "big")


def share_to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(raw: bytes) -> int:
    if len(raw) != SHARE_BYTES:
        raise CryptoError("bad share length")
    return int.from_bytes(raw, "big")
