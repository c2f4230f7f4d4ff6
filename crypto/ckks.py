"""Secure sums under CKKS (TenSEAL): silos share one secret key, the aggregator adds ciphertexts.

Steps: advertise_keys (signed X25519 cipher keys); share_context (the leader, first silo of
U1 in sorted order, seals the serialized secret context to every other silo and gives the
aggregator the signed public context); encrypted_input (every silo encrypts its input in
chunks); decrypt (the aggregator adds the survivors' ciphertexts and one survivor, the first
in sorted order, decrypts the sum once). Weaker than secagg: see SECURITY.md.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping

import numpy as np

from fedalign.crypto._common import Layout, StepMachine, check_envelope, check_ids, check_own_identity
from fedalign.crypto.config import SecureSumConfig
from fedalign.crypto.errors import CryptoError, EncodingOverflow, SecAggAborted, SecureSumUsageError
from fedalign.crypto.hazmat import aead, ckks, keys, signing
from fedalign.crypto.identity import AGGREGATOR, IdentityKey, Roster
from fedalign.crypto.messages import (
    CkksContextRelay,
    CkksContextShare,
    CkksDecryptedSum,
    CkksDecryptRequest,
    CkksInput,
    KeyAdvertisement,
    KeyRoster,
    Message,
    Stage,
)

__all__ = ["CkksSilo", "CkksAggregator"]

_TAG = b"fedalign/ckks/v1"


class _Instance:
    def __init__(self, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        if config.mode != "ckks":
            raise SecureSumUsageError(f"ckks protocol built with mode {config.mode!r}")
        if not isinstance(roster, Roster):
            raise SecureSumUsageError("roster must be a crypto.Roster")
        for name, v in (("round_id", round_id), ("instance_id", instance_id)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SecureSumUsageError(f"{name} must be an int >= 0, got {v!r}")
        config.check_roster(roster.ids, round_id, instance_id)
        self.roster, self.round_id, self.instance_id, self.config = roster, round_id, instance_id, config
        self.t = config.threshold
        self.slots = ckks.chunk_slots(config.ckks_poly_modulus)

    def ctx(self, stage: Stage) -> tuple:
        return (_TAG, self.round_id, self.instance_id, stage.value)

    def verify_advert(self, silo: str, c_pk: bytes, sig: bytes) -> None:
        signing.verify(self.roster.members[silo], sig, *self.ctx(Stage.ADVERTISE_KEYS), silo, c_pk, b"")

    def seal_key(self, c_private, peer_c_pk: bytes, u: str, v: str) -> bytes:
        lo, hi = sorted((u, v))
        return keys.agree(c_private, peer_c_pk, *self.ctx(Stage.SHARE_CONTEXT), "context-seal", lo, hi)

    def seal_context(self, leader: str, recipient: str) -> tuple:
        return (*self.ctx(Stage.SHARE_CONTEXT), "secret-context", leader, recipient)

    def input_parts(self, silo: str) -> tuple:
        """What a silo signs with its encrypted input: its view of the round (config.view)."""
        return (*self.ctx(Stage.ENCRYPTED_INPUT), silo, self.config.view)

    def n_chunks(self, total: int) -> int:
        return math.ceil(total / self.slots)


class CkksSilo:
    """Silo side of one CKKS instance. Raises CryptoError/SecAggAborted and is then dead."""

    def __init__(self, identity: IdentityKey, silo_id: str, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        self.inst = _Instance(roster, round_id, instance_id, config)
        check_own_identity(identity, silo_id, roster)
        self.identity, self.me = identity, silo_id
        self.stage = Stage.ADVERTISE_KEYS
        self._inputs = None
        self._ctx = None
        self._dead = False

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        if self.stage in (Stage.DECRYPT, Stage.DONE):
            raise SecureSumUsageError(f"silo {self.me!r}: set_inputs() after the encrypted input was sent")
        layout = Layout.of_inputs(inputs)
        flat = layout.flatten(inputs, np.float64)
        clip = self.inst.config.clip
        if flat.size and not (np.isfinite(flat).all() and np.abs(flat).max() <= clip):
            raise EncodingOverflow(f"silo {self.me!r}: input values must lie in [-{clip}, {clip}] (the declared clip)")
        self._inputs = (layout, flat)

    def start(self) -> list[Message]:
        if self.stage != Stage.ADVERTISE_KEYS or self._dead:
            raise SecureSumUsageError("start() called twice")
        self._c = keys.new_x25519()
        c_pk = keys.x25519_public_bytes(self._c)
        sig = signing.sign(self.identity.private_key, *self.inst.ctx(Stage.ADVERTISE_KEYS), self.me, c_pk, b"")
        self._c_pk = c_pk
        self.stage = Stage.SHARE_CONTEXT
        return [self._msg(KeyAdvertisement, cipher_pk=c_pk, mask_pk=b"", signature=sig)]

    def handle(self, msg: Message) -> list[Message]:
        if self._dead or self.stage in (Stage.ADVERTISE_KEYS, Stage.DONE):
            raise CryptoError(f"message rejected (silo {self.me!r} at stage {self.stage.value})")
        # The leader gets a KeyRoster at share_context; every silo gets a relay next; one
        # survivor may get a decrypt request.
        if self.stage == Stage.SHARE_CONTEXT and type(msg) is KeyRoster:
            cls, fn = KeyRoster, self._on_key_roster
        else:
            cls, fn = {
                Stage.SHARE_CONTEXT: (CkksContextRelay, self._on_relay),
                Stage.ENCRYPTED_INPUT: (CkksContextRelay, self._on_relay),
                Stage.DECRYPT: (CkksDecryptRequest, self._on_decrypt),
            }[self.stage]
        try:
            check_envelope(msg, cls, self.inst.round_id, self.inst.instance_id, AGGREGATOR)
            return fn(msg)
        except (CryptoError, SecAggAborted):
            self._dead = True
            raise

    @property
    def done(self) -> bool:
        return self.stage in (Stage.DECRYPT, Stage.DONE)

    def _msg(self, cls, **fields):
        return cls(round_id=self.inst.round_id, instance_id=self.inst.instance_id, sender=self.me, **fields)

    def _on_key_roster(self, msg: KeyRoster) -> list[Message]:
        inst, me = self.inst, self.me
        entries = msg.keys
        if not isinstance(entries, dict) or me not in entries or min(entries) != me or not set(entries) <= set(inst.roster.ids):
            raise CryptoError("key roster rejected")
        for v in sorted(entries):
            e = entries[v]
            if not (isinstance(e, tuple) and len(e) == 3 and all(isinstance(b, bytes) for b in e) and e[1] == b""):
                raise CryptoError("key roster rejected")
            inst.verify_advert(v, e[0], e[2])
        if entries[me][0] != self._c_pk or len({e[0] for e in entries.values()}) != len(entries):
            raise CryptoError("key roster rejected")
        if len(entries) < inst.t:
            raise SecAggAborted(f"silo {me!r}: {len(entries)} silos advertised keys, threshold {inst.t}")
        ctx = ckks.new_context(inst.config.ckks_poly_modulus, inst.config.ckks_scale_bits)
        secret = ckks.secret_context_bytes(ctx)
        sealed = {
            v: aead.seal(inst.seal_key(self._c, entries[v][0], me, v), secret, *inst.seal_context(me, v))
            for v in sorted(entries) if v != me
        }
        public = ckks.public_context_bytes(ctx)
        sig = signing.sign(self.identity.private_key, *inst.ctx(Stage.SHARE_CONTEXT), me, hashlib.sha256(public).digest())
        self._ctx = ctx
        self.stage = Stage.ENCRYPTED_INPUT
        return [self._msg(CkksContextShare, public_context=public, secret_contexts=sealed, signature=sig)]

    def _on_relay(self, msg: CkksContextRelay) -> list[Message]:
        inst, me = self.inst, self.me
        if not (isinstance(msg.leader, str) and msg.leader in inst.roster and isinstance(msg.leader_cipher_pk, bytes)
                and isinstance(msg.leader_signature, bytes) and isinstance(msg.secret_context, bytes)):
            raise CryptoError("context relay rejected")
        if msg.leader == me:
            if self._ctx is None or msg.secret_context or msg.leader_cipher_pk != self._c_pk:
                raise CryptoError("context relay rejected")
        else:
            if self._ctx is not None or msg.leader > me:
                raise CryptoError("context relay rejected")
            inst.verify_advert(msg.leader, msg.leader_cipher_pk, msg.leader_signature)
            key = inst.seal_key(self._c, msg.leader_cipher_pk, me, msg.leader)
            secret = aead.open_sealed(key, msg.secret_context, *inst.seal_context(msg.leader, me))
            self._ctx = ckks.load_context(secret, private=True)
        if self._inputs is None:
            raise SecureSumUsageError(f"silo {me!r}: set_inputs() must be called before the encrypted-input step")
        layout, flat = self._inputs
        chunks = ckks.encrypt_chunks(self._ctx, flat, inst.slots)
        self._layout, self._inputs = layout, None
        self.stage = Stage.DECRYPT
        sig = signing.sign(self.identity.private_key, *inst.input_parts(me))
        return [self._msg(CkksInput, names=layout.names, shapes=layout.shapes, chunks=chunks, signature=sig)]

    @property
    def survivors(self) -> tuple[str, ...] | None:
        """The roster once this silo's input left, when the sum allows no dropouts (the decryptor
        then decrypts only a sum over all of it); None otherwise."""
        if self.stage in (Stage.DECRYPT, Stage.DONE) and not self.inst.config.allow_dropouts:
            return tuple(self.inst.roster.ids)
        return None

    def _on_decrypt(self, msg: CkksDecryptRequest) -> list[Message]:
        inst, me = self.inst, self.me
        included = check_ids(msg.included, inst.roster.ids, what="included")
        total = self._layout.total
        if me not in included or len(included) < inst.t or not isinstance(msg.chunks, tuple) or len(msg.chunks) != inst.n_chunks(total):
            raise CryptoError("decrypt request rejected")
        if not inst.config.allow_dropouts and set(included) != set(inst.roster.ids):
            raise CryptoError("decrypt request rejected: this sum allows no dropouts")
        sigs = msg.signatures
        if not isinstance(sigs, dict) or set(sigs) != set(included):
            raise CryptoError("decrypt request rejected: every included silo must sign the round's view")
        for v in sorted(included):  # one view: a silo shown other public values signed another one
            if not isinstance(sigs[v], bytes):
                raise CryptoError("decrypt request rejected")
            signing.verify(inst.roster.members[v], sigs[v], *inst.input_parts(v))
        values = ckks.decrypt_chunks(self._ctx, msg.chunks, total, inst.slots, inst.config.ckks_scale_bits // 2)
        self._ctx = None  # decrypt once per instance
        self.stage = Stage.DONE
        return [self._msg(CkksDecryptedSum, values=values)]


class CkksAggregator(StepMachine):
    """Aggregator side of one CKKS instance: relays the sealed context, adds ciphertexts."""

    def __init__(self, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        self.inst = _Instance(roster, round_id, instance_id, config)
        super().__init__(Stage.ADVERTISE_KEYS, roster.ids, config.threshold)
        self.result = None
        self._layout = None
        self._sums = None
        self._signatures: dict[str, bytes] = {}

    def _msg(self, cls, **fields):
        return cls(round_id=self.inst.round_id, instance_id=self.inst.instance_id, sender=AGGREGATOR, **fields)

    def _minimum(self, stage) -> int:
        return 1 if stage in (Stage.SHARE_CONTEXT, Stage.DECRYPT) else self.inst.config.minimum(len(self.inst.roster))

    def _reject(self, sender, stage):
        return CryptoError(f"message rejected (from {sender!r} at stage {stage.value})")

    def _accept(self, stage, sender, msg):
        inst = self.inst
        if stage == Stage.ADVERTISE_KEYS:
            check_envelope(msg, KeyAdvertisement, inst.round_id, inst.instance_id, sender)
            if not (isinstance(msg.cipher_pk, bytes) and len(msg.cipher_pk) == 32 and msg.mask_pk == b"" and isinstance(msg.signature, bytes)):
                raise self._reject(sender, stage)
            inst.verify_advert(sender, msg.cipher_pk, msg.signature)
            return msg
        if stage == Stage.SHARE_CONTEXT:
            check_envelope(msg, CkksContextShare, inst.round_id, inst.instance_id, sender)
            if not (isinstance(msg.public_context, bytes) and isinstance(msg.signature, bytes) and isinstance(msg.secret_contexts, dict)
                    and set(msg.secret_contexts) == self.u1 - {sender} and all(isinstance(b, bytes) for b in msg.secret_contexts.values())):
                raise self._reject(sender, stage)
            signing.verify(inst.roster.members[sender], msg.signature, *inst.ctx(Stage.SHARE_CONTEXT), sender, hashlib.sha256(msg.public_context).digest())
            self._public = ckks.load_context(msg.public_context, private=False)
            return msg
        if stage == Stage.ENCRYPTED_INPUT:
            check_envelope(msg, CkksInput, inst.round_id, inst.instance_id, sender)
            layout = Layout.from_wire(msg.names, msg.shapes)
            total = layout.total
            if (self._layout is not None and layout != self._layout) or not isinstance(msg.chunks, tuple) or len(msg.chunks) != inst.n_chunks(total):
                raise self._reject(sender, stage)
            if not isinstance(msg.signature, bytes):
                raise self._reject(sender, stage)
            signing.verify(inst.roster.members[sender], msg.signature, *inst.input_parts(sender))
            self._signatures[sender] = msg.signature
            vecs = [ckks.load_vector(self._public, raw, min(inst.slots, total - i * inst.slots)) for i, raw in enumerate(msg.chunks)]
            if self._sums is None:
                self._layout, self._sums = layout, vecs
            else:
                for acc, v in zip(self._sums, vecs):
                    acc += v
            return None
        if stage == Stage.DECRYPT:
            check_envelope(msg, CkksDecryptedSum, inst.round_id, inst.instance_id, sender)
            v = msg.values
            if not (isinstance(v, np.ndarray) and v.dtype == np.float64 and v.ndim == 1 and v.size == self._layout.total):
                raise self._reject(sender, stage)
            return v
        raise self._reject(sender, stage)

    def _advance(self, stage, answers):
        if stage == Stage.ADVERTISE_KEYS:
            self.u1 = frozenset(answers)
            self._adverts = answers
            self.leader = min(self.u1)
            entries = {v: (a.cipher_pk, a.mask_pk, a.signature) for v, a in answers.items()}
            return [(self.leader, self._msg(KeyRoster, keys=entries))], Stage.SHARE_CONTEXT, {self.leader}
        if stage == Stage.SHARE_CONTEXT:
            share = answers[self.leader]
            lead = self.adverts_of(self.leader)
            out = [
                (u, self._msg(CkksContextRelay, leader=self.leader, leader_cipher_pk=lead[0], leader_signature=lead[1],
                              secret_context=share.secret_contexts.get(u, b"")))
                for u in sorted(self.u1)
            ]
            return out, Stage.ENCRYPTED_INPUT, self.u1
        if stage == Stage.ENCRYPTED_INPUT:
            self.included = tuple(sorted(answers))
            decryptor = self.included[0]
            chunks = tuple(v.serialize() for v in self._sums)
            self._sums = None
            sigs = {v: self._signatures[v] for v in self.included}
            return [(decryptor, self._msg(CkksDecryptRequest, included=self.included, chunks=chunks, signatures=sigs))], \
                Stage.DECRYPT, {decryptor}
        if stage == Stage.DECRYPT:
            (values,) = answers.values()
            self.result = ({n: a.copy() for n, a in self._layout.split(values).items()}, self.included)
            return [], Stage.DONE, ()
        raise AssertionError(stage)

    def adverts_of(self, silo: str) -> tuple[bytes, bytes]:
        a = self._adverts[silo]
        return a.cipher_pk, a.signature
