"""Fixtures of the crypto tests (the step-by-step driver lives in secure_sum_harness.py)."""

import pytest

from fedalign.crypto import SecureSumConfig


@pytest.fixture
def secagg():
    def make(t=3, **kw):
        return SecureSumConfig(mode="secagg", threshold=t, clip=1.0, allow_insecure_plaintext=False, **kw)

    return make
