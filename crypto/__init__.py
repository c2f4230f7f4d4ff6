"""Secure aggregation: a small recipe API over a hazmat layer (needs no torch).

Recipes (this module): the scheme table (``register_scheme``, crypto/schemes.py), ``SecureSumConfig``, ``SiloSecureSum``, ``AggregatorSecureSum``,
``secure_sum_inprocess``, identities and rosters, the message vocabulary, the errors.
``crypto.hazmat`` holds the sharp primitives underneath; do not use them alone.
See docs/secure-aggregation.md for the protocol and SECURITY.md for the threat model.
"""

from fedalign.crypto.config import SecureSumConfig
from fedalign.crypto.errors import (
    CryptoError,
    EncodingOverflow,
    InsecurePlaintextRefused,
    SecAggAborted,
    SecureSumError,
    SecureSumUsageError,
)
from fedalign.crypto.identity import AGGREGATOR, IdentityKey, Roster, generate_identity, load_identity, save_identity
from fedalign.crypto.inprocess import secure_sum_inprocess
from fedalign.crypto.messages import MESSAGE_TYPES, Message, Stage, check_wire_types
from fedalign.crypto.schemes import SCHEMES, SchemeSpec, register_scheme, scheme_names, scheme_spec
from fedalign.crypto.secure_sum import AggregatorSecureSum, SecureSumResult, SiloSecureSum

__all__ = [
    "SCHEMES",
    "SchemeSpec",
    "register_scheme",
    "scheme_names",
    "scheme_spec",
    "SecureSumConfig",
    "SiloSecureSum",
    "AggregatorSecureSum",
    "SecureSumResult",
    "secure_sum_inprocess",
    "IdentityKey",
    "Roster",
    "AGGREGATOR",
    "generate_identity",
    "save_identity",
    "load_identity",
    "Message",
    "Stage",
    "MESSAGE_TYPES",
    "check_wire_types",
    "SecureSumError",
    "CryptoError",
    "SecAggAborted",
    "SecureSumUsageError",
    "EncodingOverflow",
    "InsecurePlaintextRefused",
]
