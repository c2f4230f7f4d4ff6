"""The secure-sum schemes by name: the one table a new scheme is added to.

Each entry names the two sides of the protocol (imported when first used, so CKKS's TenSEAL loads
only for ckks sums) and the facts the rest of the toolkit asks of a scheme: whether the aggregator
sees each input (``insecure``: only behind ``allow_insecure_plaintext``), whether the survivors sign
who was included so that a phase may complete without some silos (``signed_survivors``: SecAgg's
consistency step), whether inputs are pairwise-masked fixed point (``pairwise_masks``: the threshold
must be a strict majority of every group, the fixed-point range must have headroom), and the
threat-model sentence the audit report prints. Configs, the wire (SumStart.scheme), the silo's pin
and the site policy accept exactly the names registered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fedalign.crypto.errors import SecureSumUsageError

__all__ = ["SchemeSpec", "SCHEMES", "register_scheme", "scheme_spec", "scheme_names"]


@dataclass(frozen=True)
class SchemeSpec:
    name: str
    protocols: Callable[[], tuple[type, type]]  # () -> (silo side, aggregator side), imported on use
    threat_model: str
    insecure: bool = False
    signed_survivors: bool = False
    pairwise_masks: bool = False


def _secagg():
    from fedalign.crypto.secagg import SecAggAggregator, SecAggSilo

    return SecAggSilo, SecAggAggregator


def _ckks():
    from fedalign.crypto.ckks import CkksAggregator, CkksSilo

    return CkksSilo, CkksAggregator


def _plain():
    from fedalign.crypto.plain import PlainAggregator, PlainSilo

    return PlainSilo, PlainAggregator


SCHEMES: dict[str, SchemeSpec] = {}


def register_scheme(spec: SchemeSpec) -> SchemeSpec:
    """Add ``spec`` to the table (a name registered twice is an error: a scheme is never replaced)."""
    if not isinstance(spec, SchemeSpec) or not spec.name or not spec.name.replace("-", "").isalnum():
        raise SecureSumUsageError(f"register_scheme: a SchemeSpec with a plain name, got {spec!r}")
    if spec.name in SCHEMES:
        raise SecureSumUsageError(f"register_scheme: {spec.name!r} is registered already")
    SCHEMES[spec.name] = spec
    return spec


def scheme_spec(name: object) -> SchemeSpec:
    """The registered scheme ``name`` (SecureSumUsageError naming the registered ones otherwise)."""
    spec = SCHEMES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise SecureSumUsageError(f"secure-sum scheme {name!r} is not one of {scheme_names()}")
    return spec


def scheme_names() -> tuple[str, ...]:
    return tuple(SCHEMES)


register_scheme(SchemeSpec(
    "secagg", _secagg, signed_survivors=True, pairwise_masks=True, threat_model=(
        "Bonawitz et al. SecAgg (SECURITY.md, mode secagg): the aggregator learns only the sum over at "
        "least t silos, provided it colludes with fewer than t silos of any group; each upload is uniformly "
        "masked; shares travel end to end under AEAD; advertised keys are signed. Not protected: the sum "
        "itself (min_silos and DP address it), which silos count as dropouts, poisoning, metadata. Against "
        "an actively malicious aggregator the guarantee needs t > 2n/3.")))
register_scheme(SchemeSpec(
    "ckks", _ckks, threat_model=(
        "CKKS via TenSEAL (SECURITY.md, mode ckks): an honest-but-curious aggregator colluding with no silo "
        "learns only the sum. Weaker than secagg: every silo holds the secret key (no threshold), a malicious "
        "aggregator can hand the decryptor one silo's ciphertext, and published decryptions can leak the key. "
        "Use only when every silo trusts every other not to collude with the aggregator.")))
register_scheme(SchemeSpec(
    "plain", _plain, insecure=True, threat_model=(
        "INSECURE plain sums (SECURITY.md, mode plain): the aggregator sees every silo's update. Debugging "
        "only, never with real data.")))
