"""DANGER: low-level cryptographic primitives of secure aggregation.

!!! This is a hazardous-materials layer. !!!
Every function here is correct only when used exactly as the protocol in ``crypto.secagg``
uses it: a fresh key per instance, nonces never reused, shares never combined across
instances, fixed-point ranges checked before summing. Used alone they are easy to misuse in
ways that silently destroy privacy (reused keystreams, revealed seeds, wrapped sums).
Call the recipes in ``crypto`` (``SiloSecureSum``, ``AggregatorSecureSum``,
``secure_sum_inprocess``) instead.

Modules: ``fixedpoint`` (Z_2^32 encoding), ``keys`` (X25519 + HKDF), ``prg`` (AES-256-CTR
masks), ``shamir`` (secret sharing over GF(2^521 - 1)), ``aead`` (ChaCha20-Poly1305),
``signing`` (Ed25519 with context binding), ``encoding`` (canonical byte strings),
``graph`` (SecAgg+ neighbour graph), ``ckks`` (TenSEAL helpers).
"""
