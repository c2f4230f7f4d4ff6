"""Errors of the crypto package (it imports nothing of ours, so it keeps its own small tree).

    SecureSumError                      root of everything this package raises on purpose
    ├── CryptoError                     opaque: a tampered share, a bad signature, a replay,
    │                                   a request to unmask both seeds of one silo, a message
    │                                   that does not belong to this round/instance/stage
    ├── SecAggAborted                   a step ended with fewer than t survivors: nothing revealed
    └── SecureSumUsageError (ValueError) the caller's mistake: bad config, inputs, roster
        ├── EncodingOverflow            a value outside the declared clip range, or no headroom
        └── InsecurePlaintextRefused    mode "plain" without allow_insecure_plaintext=True

``CryptoError`` says which silo and stage it concerns and nothing about which check failed:
an attacker probing the protocol learns only "rejected" (like Fernet's ``InvalidToken``).
"""

from __future__ import annotations

__all__ = [
    "SecureSumError",
    "CryptoError",
    "SecAggAborted",
    "SecureSumUsageError",
    "EncodingOverflow",
    "InsecurePlaintextRefused",
]


class SecureSumError(Exception):
    """Root of every error the crypto package raises on purpose."""


class CryptoError(SecureSumError):
    """A cryptographic check failed. Deliberately opaque: no detail about which check."""


class SecAggAborted(SecureSumError):
    """Fewer than the threshold of silos survived a step; the protocol stopped revealing nothing."""


class SecureSumUsageError(SecureSumError, ValueError):
    """The caller passed something invalid (config, roster, inputs, call order)."""


class EncodingOverflow(SecureSumUsageError):
    """A value lies outside the declared clip range, or the sum of all silos could wrap."""


class InsecurePlaintextRefused(SecureSumUsageError):
    """Mode "plain" was asked for without the explicit ``allow_insecure_plaintext=True``."""
