"""Masks: AES-256-CTR keystream words added in chunks equal an independent computation."""

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedalign.crypto.hazmat.prg import apply_masks, keystream


def _reference(key: bytes, n: int) -> np.ndarray:
    raw = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * n))
    return np.frombuffer(raw, dtype="<u4").astype(np.int64)


def test_nist_sp800_38a_aes256_ctr_vector():
    # F.5.5 CTR-AES256.Encrypt, block 1, checks that the primitive is standard AES-CTR.
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    ctr = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    pt = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    ct = Cipher(algorithms.AES(key), modes.CTR(ctr)).encryptor().update(pt)
    assert ct.hex() == "601ec313775789a5b7a7f504bbf3d228"


@pytest.mark.parametrize("n,chunk", [(1, 4), (1000, 7), (1000, 1 << 16), (70001, 4096)])
def test_apply_masks_matches_reference(n, chunk):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    adds, subs = [os.urandom(32) for _ in range(3)], [os.urandom(32) for _ in range(2)]
    expect = x.astype(np.int64) + sum(_reference(k, n) for k in adds) - sum(_reference(k, n) for k in subs)
    got = x.copy()
    apply_masks(got, adds, subs, chunk_words=chunk)
    np.testing.assert_array_equal(got, (expect % 2**32).astype(np.uint32))
    np.testing.assert_array_equal(keystream(adds[0], n), _reference(adds[0], n).astype(np.uint32))


def test_add_then_subtract_cancels():
    x = np.arange(5000, dtype=np.uint32)
    k = os.urandom(32)
    y = x.copy()
    apply_masks(y, [k])
    assert not np.array_equal(y, x)
    apply_masks(y, (), [k])
    np.testing.assert_array_equal(y, x)


def test_rejects_wrong_buffers():
    with pytest.raises(ValueError):
        apply_masks(np.zeros(4, np.int32), [os.urandom(32)])
    with pytest.raises(ValueError):
        apply_masks(np.zeros(4, np.uint32), [b"short"])
