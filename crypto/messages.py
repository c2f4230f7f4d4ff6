"""The wire vocabulary of secure sums: frozen dataclasses and the stage enum.

Fields hold only int, float, str, bytes, bool, None, tuples or dicts of those, and numpy
arrays, so a transport can serialize any message generically (msgpack header + raw array
frames) and rebuild it with ``MESSAGE_TYPES[type(msg).__name__](**fields)``. The annotations
are precise on purpose: ``fedalign.protocol.wire`` checks every decoded field against them (a silo name
is a str, a share is bytes) before a message is built; the state machines still validate
lengths and membership, and answer with the opaque ``CryptoError``. Every message
carries round_id, instance_id, stage and sender; messages from the aggregator have sender
``"aggregator"``. Receivers check all four before they look at anything else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = [
    "INPUT_TYPES",
    "input_nbytes",
    "Stage",
    "Message",
    "KeyAdvertisement",
    "KeyRoster",
    "EncryptedShares",
    "SharesRelay",
    "MaskedInput",
    "ConsistencyRequest",
    "ConsistencySignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "CkksContextShare",
    "CkksContextRelay",
    "CkksInput",
    "CkksDecryptRequest",
    "CkksDecryptedSum",
    "PlainInput",
    "MESSAGE_TYPES",
    "check_wire_types",
]


class Stage(str, Enum):
    """Steps of a secure sum; a message's stage is the step it belongs to."""

    # secagg
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    # ckks (starts with ADVERTISE_KEYS too)
    SHARE_CONTEXT = "share_context"
    ENCRYPTED_INPUT = "encrypted_input"
    DECRYPT = "decrypt"
    # plain (insecure)
    PLAIN_INPUT = "plain_input"
    # terminal
    DONE = "done"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, kw_only=True)
class Message:
    """Envelope every message carries."""

    round_id: int
    instance_id: int
    sender: str
    stage: str = ""

    STAGE = ""  # the stage a message of this type belongs to (class attribute, not a field)

    def __post_init__(self) -> None:
        if not self.stage:
            object.__setattr__(self, "stage", self.STAGE.value if isinstance(self.STAGE, Stage) else self.STAGE)

    def fields(self) -> dict:
        """Field name -> value, shallow (for generic serializers)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ---- secagg -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class KeyAdvertisement(Message):
    """Silo -> aggregator: fresh X25519 public keys for this instance, signed by the identity.

    cipher_pk encrypts shares silo to silo; mask_pk derives pairwise masks (empty in ckks).
    """

    STAGE = Stage.ADVERTISE_KEYS
    cipher_pk: bytes
    mask_pk: bytes
    signature: bytes


@dataclass(frozen=True, kw_only=True)
class KeyRoster(Message):
    """Aggregator -> silo: silo_id -> (cipher_pk, mask_pk, signature) of its group that advertised."""

    STAGE = Stage.SHARE_KEYS
    keys: dict[str, tuple[bytes, bytes, bytes]]


@dataclass(frozen=True, kw_only=True)
class EncryptedShares(Message):
    """Silo -> aggregator: recipient silo_id -> AEAD ciphertext of this silo's shares for it."""

    STAGE = Stage.SHARE_KEYS
    shares: dict[str, bytes]


@dataclass(frozen=True, kw_only=True)
class SharesRelay(Message):
    """Aggregator -> silo: sender silo_id -> ciphertext addressed to the recipient."""

    STAGE = Stage.MASKED_INPUT
    shares: dict[str, bytes]


@dataclass(frozen=True, kw_only=True)
class MaskedInput(Message):
    """Silo -> aggregator: the masked fixed-point input, one flat uint32 vector.

    names/shapes give the layout: arrays in sorted name order, each flattened C-order.
    """

    STAGE = Stage.MASKED_INPUT
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    masked: np.ndarray


@dataclass(frozen=True, kw_only=True)
class ConsistencyRequest(Message):
    """Aggregator -> silo: the silos whose masked input arrived (U3), to be signed."""

    STAGE = Stage.CONSISTENCY
    survivors: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ConsistencySignature(Message):
    """Silo -> aggregator: the silo's signature over the survivor list it was shown."""

    STAGE = Stage.CONSISTENCY
    signature: bytes


@dataclass(frozen=True, kw_only=True)
class UnmaskRequest(Message):
    """Aggregator -> silo: survivors (reveal their self-mask shares), dropped (reveal their
    mask-key shares), and the consistency signatures over ``survivors``."""

    STAGE = Stage.UNMASK
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: dict[str, bytes]


@dataclass(frozen=True, kw_only=True)
class UnmaskResponse(Message):
    """Silo -> aggregator: Shamir shares (66 bytes each) it holds, keyed by the owner silo."""

    STAGE = Stage.UNMASK
    self_seed_shares: dict[str, bytes]
    mask_key_shares: dict[str, bytes]


# ---- ckks ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CkksContextShare(Message):
    """Leader silo -> aggregator: the public CKKS context (no secret key) it signed, and the
    serialized secret context sealed to every other silo."""

    STAGE = Stage.SHARE_CONTEXT
    public_context: bytes
    secret_contexts: dict[str, bytes]
    signature: bytes


@dataclass(frozen=True, kw_only=True)
class CkksContextRelay(Message):
    """Aggregator -> silo: the leader's signed cipher key and its sealed secret context for this
    silo (empty for the leader itself)."""

    STAGE = Stage.ENCRYPTED_INPUT
    leader: str
    leader_cipher_pk: bytes
    leader_signature: bytes
    secret_context: bytes


@dataclass(frozen=True, kw_only=True)
class CkksInput(Message):
    """Silo -> aggregator: serialized CKKS ciphertexts, one per chunk of <= slots values."""

    STAGE = Stage.ENCRYPTED_INPUT
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    chunks: tuple[bytes, ...]
    signature: bytes  # over the silo's view (config.view): the decryptor checks every included silo's


@dataclass(frozen=True, kw_only=True)
class CkksDecryptRequest(Message):
    """Aggregator -> one silo: the summed ciphertexts, the silos included in the sum, and each
    included silo's signature over its view (the decryptor decrypts only if all signed its own)."""

    STAGE = Stage.DECRYPT
    included: tuple[str, ...]
    chunks: tuple[bytes, ...]
    signatures: dict[str, bytes]


@dataclass(frozen=True, kw_only=True)
class CkksDecryptedSum(Message):
    """Decrypting silo -> aggregator: the decrypted flat sum (float64)."""

    STAGE = Stage.DECRYPT
    values: np.ndarray


# ---- plain (insecure) ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlainInput(Message):
    """Silo -> aggregator, INSECURE debug mode: the flat float64 input in the clear."""

    STAGE = Stage.PLAIN_INPUT
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    values: np.ndarray


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        KeyAdvertisement,
        KeyRoster,
        EncryptedShares,
        SharesRelay,
        MaskedInput,
        ConsistencyRequest,
        ConsistencySignature,
        UnmaskRequest,
        UnmaskResponse,
        CkksContextShare,
        CkksContextRelay,
        CkksInput,
        CkksDecryptRequest,
        CkksDecryptedSum,
        PlainInput,
    )
}

_SCALARS = (int, float, str, bytes, bool, type(None))


def _wire_ok(v: object) -> bool:
    if isinstance(v, _SCALARS) or isinstance(v, np.ndarray):
        return True
    if isinstance(v, tuple):
        return all(_wire_ok(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _wire_ok(x) for k, x in v.items())
    return False


def check_wire_types(msg: Message) -> None:
    """Raise TypeError if a field holds anything a generic serializer cannot carry."""
    if type(msg).__name__ not in MESSAGE_TYPES:
        raise TypeError(f"unknown message type {type(msg).__name__}")
    for name, value in msg.fields().items():
        if not _wire_ok(value):
            raise TypeError(f"{type(msg).__name__}.{name}: {type(value).__name__} is not a wire type")


INPUT_TYPES = (MaskedInput, CkksInput, PlainInput)  # the messages that carry a silo's input


def input_nbytes(m: Message) -> int:
    """Bytes of the summed values themselves in a silo's input message (masked, encrypted or
    plain); 0 for any other message."""
    if isinstance(m, MaskedInput):
        return int(m.masked.nbytes)
    if isinstance(m, PlainInput):
        return int(m.values.nbytes)
    if isinstance(m, CkksInput):
        return sum(len(c) for c in m.chunks)
    return 0
