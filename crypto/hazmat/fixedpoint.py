"""Fixed-point encoding of float arrays into Z_2^32 with a declared range and headroom check.

A value x with |x| <= clip maps to round(x * 2^f) mod 2^32. The sum of n silos stays exact
(no wrap) when n * ceil(clip * 2^f) < 2^31; ``check_headroom`` enforces it up front and
``encode`` refuses values outside [-clip, clip]: overflow is an error, never noise.
"""

from __future__ import annotations

import math

import numpy as np

from fedalign.crypto.errors import EncodingOverflow

__all__ = ["MAX_SUM", "auto_fractional_bits", "check_headroom", "encode_into", "decode_sum"]

MAX_SUM = 2**31 - 1  # largest |sum| representable as a signed 32-bit residue


def _bound(clip: float, frac_bits: int) -> int:
    return math.ceil(clip * 2.0**frac_bits)


def check_headroom(clip: float, frac_bits: int, n_silos: int) -> None:
    """Raise :class:`EncodingOverflow` unless n silos' values of |x| <= clip sum without wrapping."""
    if not (clip > 0 and math.isfinite(clip)):
        raise EncodingOverflow(f"clip must be a positive finite number, got {clip!r}")
    if not 0 <= frac_bits <= 30:
        raise EncodingOverflow(f"fractional_bits must be in 0..30, got {frac_bits}")
    if n_silos * _bound(clip, frac_bits) > MAX_SUM:
        raise EncodingOverflow(
            f"no headroom: {n_silos} silos x clip {clip} x 2^{frac_bits} exceeds 2^31 - 1; "
            f"lower fractional_bits or clip"
        )


def auto_fractional_bits(clip: float, n_silos: int) -> int:
    """The most fractional bits (<= 30) that keep a sum over ``n_silos`` exact."""
    for f in range(30, -1, -1):
        try:
            check_headroom(clip, f, n_silos)
            return f
        except EncodingOverflow:
            continue
    raise EncodingOverflow(f"clip {clip} is too large for {n_silos} silos even with 0 fractional bits")


def encode_into(x: np.ndarray, out: np.ndarray, clip: float, frac_bits: int, name: str = "input") -> None:
    """Write round(x * 2^f) mod 2^32 into the uint32 view ``out`` (same number of elements).

    Raises :class:`EncodingOverflow` naming ``name`` if any value is non-finite or |x| > clip.
    Works in cache-sized chunks: one scratch buffer, no array-sized temporaries.
    """
    flat = np.asarray(x).reshape(-1)
    if flat.size != out.size:
        raise ValueError(f"{name}: {flat.size} values for {out.size} slots")
    scale = 2.0**frac_bits
    bound = clip * scale  # |x| <= clip  <=>  |x * 2^f| <= clip * 2^f (the scaling is exact)
    dst = out.view(np.int32)
    step = 1 << 16
    # float32 inputs scale exactly in float32 (power of two); anything else goes through float64.
    work = np.float32 if flat.dtype == np.float32 else np.float64
    tmp = np.empty(min(step, max(flat.size, 1)), dtype=work)
    for start in range(0, flat.size, step):
        stop = min(start + step, flat.size)
        t = tmp[: stop - start]
        np.multiply(flat[start:stop], work(scale), out=t, casting="unsafe")
        lo, hi = t.min(), t.max()
        if not (lo >= -bound and hi <= bound):  # also catches NaN
            bad = flat[start:stop]
            raise EncodingOverflow(
                f"{name}: values must lie in [-{clip}, {clip}] (the declared clip), "
                f"got [{np.nanmin(bad)}, {np.nanmax(bad)}]" + (" and NaN" if np.isnan(bad).any() else "")
            )
        np.rint(t, out=t)
        dst[start:stop] = t


def decode_sum(total: np.ndarray, frac_bits: int) -> np.ndarray:
    """Read a uint32 sum as signed and scale back to a new float64 array (one pass)."""
    out = np.empty(total.shape, dtype=np.float64)
    np.multiply(total.view(np.int32), 2.0**-frac_bits, out=out)
    return out
