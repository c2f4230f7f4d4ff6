"""Masked inputs look uniform in Z_2^32 (chi-square), and a deliberately weak mask does not."""

import numpy as np
import pytest
from secure_sum_harness import Run
from scipy.stats import chisquare

from fedalign import crypto  # noqa: E402
import fedalign.crypto.secagg  # noqa: F401
from fedalign.crypto.hazmat.prg import apply_masks


def _masked_upload(secagg, n_words=1 << 16):
    run = Run(3, secagg(2), shape=(n_words,))
    for s in run.ids:  # a constant, maximally structured input
        run.silos[s].set_inputs({"w": np.full(n_words, 0.25, np.float32), "b": np.zeros(4, np.float32)})
    masked = run.to_silos(run.to_agg(run.to_silos(run.to_agg(run.start()))))
    return masked[0][1].masked


def _p_value(words: np.ndarray) -> float:
    # Each of the 4 byte lanes and the top 8 bits must be uniform over 256 values.
    lanes = words.view(np.uint8).reshape(-1, 4)
    samples = [lanes[:, i] for i in range(4)] + [(words >> 24).astype(np.uint8)]
    return min(chisquare(np.bincount(x, minlength=256)).pvalue for x in samples)


def test_masked_upload_is_uniform(secagg):
    assert _p_value(_masked_upload(secagg)) > 1e-6


def test_a_broken_mask_fails_the_same_test(secagg, monkeypatch):
    def weak_masks(target, add_keys=(), sub_keys=(), **kw):
        # Broken on purpose: only the low 24 bits of each mask word are random.
        mask = np.zeros_like(target)
        apply_masks(mask, add_keys, sub_keys)
        target += mask & np.uint32(0x00FFFFFF)

    monkeypatch.setattr(crypto.secagg, "apply_masks", weak_masks)
    assert _p_value(_masked_upload(secagg)) < 1e-12
