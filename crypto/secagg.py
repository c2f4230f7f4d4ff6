"""The SecAgg protocol (Bonawitz et al., CCS 2017) with the SecAgg+ neighbour graph option.

Steps, each ended by the aggregator when every expected silo answered or at a deadline:
  advertise_keys  silo: fresh X25519 cipher and mask keys, signed by its identity
  share_keys      silo: Shamir shares (threshold t) of its self-mask seed b and mask key s,
                  sealed to each neighbour with AEAD; the aggregator relays what it cannot read
  masked_input    silo: y = encode(x) + PRG(b) + sum_v +-PRG(KA(s, s_v)) mod 2^32
  consistency     silo: signs the survivor list U3 and the caller's view (config.view: a digest of
                  every public value its input depends on), so every silo sees the same list and
                  the same public values
  unmask          silo: checks the signatures of every survivor of its group (its neighbours
                  only, under SecAgg+), then for each neighbour the b-share if it survived, else
                  the s-share; never both for one silo, and only once per instance
With ``config.allow_dropouts`` False (a later phase of a multi-phase round) every step needs the
whole roster and no silo ever reveals an s-share.
The aggregator reconstructs the b of survivors and the s of dropouts, removes their masks
and decodes the sum. Fewer than t survivors at any step: SecAggAborted, nothing revealed.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from fedalign.crypto._common import Layout, StepMachine, check_envelope, check_ids, check_own_identity
from fedalign.crypto.config import SecureSumConfig
from fedalign.crypto.errors import CryptoError, SecAggAborted, SecureSumUsageError
from fedalign.crypto.hazmat import aead, keys, shamir, signing
from fedalign.crypto.hazmat.encoding import canonical
from fedalign.crypto.hazmat.fixedpoint import decode_sum, encode_into
from fedalign.crypto.hazmat.prg import apply_masks
from fedalign.crypto.identity import AGGREGATOR, IdentityKey, Roster
from fedalign.crypto.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    KeyAdvertisement,
    KeyRoster,
    MaskedInput,
    Message,
    SharesRelay,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["SecAggSilo", "SecAggAggregator"]

_TAG = b"fedalign/secagg/v1"
_SHARE_PT = 2 * shamir.SHARE_BYTES


class _Instance:
    """What both sides derive identically from (roster, round, instance, config)."""

    def __init__(self, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        if config.mode != "secagg":
            raise SecureSumUsageError(f"secagg protocol built with mode {config.mode!r}")
        if not isinstance(roster, Roster):
            raise SecureSumUsageError("roster must be a crypto.Roster")
        for name, v in (("round_id", round_id), ("instance_id", instance_id)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SecureSumUsageError(f"{name} must be an int >= 0, got {v!r}")
        self.roster, self.round_id, self.instance_id, self.config = roster, round_id, instance_id, config
        self.t = config.threshold
        self.graph = config.check_roster(roster.ids, round_id, instance_id)
        self.frac_bits = config.frac_bits(len(roster))
        self.minimum = config.minimum(len(roster))

    def ctx(self, stage: Stage) -> tuple:
        return (_TAG, self.round_id, self.instance_id, stage.value)

    def group(self, u: str) -> frozenset[str]:
        return self.graph[u] | {u}

    def pairwise_key(self, s_private, peer_s_pk: bytes, u: str, v: str) -> bytes:
        lo, hi = sorted((u, v))
        return keys.agree(s_private, peer_s_pk, *self.ctx(Stage.MASKED_INPUT), "pairwise", lo, hi)

    def self_key(self, seed: bytes, u: str) -> bytes:
        return keys.hkdf(seed, canonical(*self.ctx(Stage.MASKED_INPUT), "self", u))

    def share_key(self, c_private, peer_c_pk: bytes, u: str, v: str) -> bytes:
        lo, hi = sorted((u, v))
        return keys.agree(c_private, peer_c_pk, *self.ctx(Stage.SHARE_KEYS), "share-seal", lo, hi)

    def share_context(self, sender: str, recipient: str) -> tuple:
        return (*self.ctx(Stage.SHARE_KEYS), "shares", sender, recipient)

    def ciphertext_len(self, sender: str, recipient: str) -> int:
        return len(canonical(sender, recipient)) + _SHARE_PT + 16

    def consistency_parts(self, u: str, survivors: tuple[str, ...]) -> tuple:
        """What ``u`` signs in the consistency step: the survivor list and the view it computed under."""
        return (*self.ctx(Stage.CONSISTENCY), u, survivors, self.config.view)

    def check_no_dropouts(self, present, what: str) -> None:
        """With dropouts not allowed, ``present`` must be the whole roster (else the sum ends here)."""
        if not self.config.allow_dropouts and set(present) != set(self.roster.ids):
            missing = sorted(set(self.roster.ids) - set(present))
            raise SecAggAborted(f"{what}: {', '.join(missing)} missing and this sum allows no dropouts "
                                "(a later phase of a multi-phase round); aborted, nothing revealed")

    def pairwise_sign(self, u: str, v: str) -> int:
        """+1 if u adds the pairwise mask with v, -1 if it subtracts it."""
        return 1 if u < v else -1


class SecAggSilo:
    """Silo side of one SecAgg instance. Raises CryptoError/SecAggAborted and is then dead."""

    def __init__(self, identity: IdentityKey, silo_id: str, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        self.inst = _Instance(roster, round_id, instance_id, config)
        check_own_identity(identity, silo_id, roster)
        self.identity, self.me = identity, silo_id
        self.stage = Stage.ADVERTISE_KEYS
        self._inputs: tuple[Layout, np.ndarray] | None = None  # encoded, masked in place later
        self._dead = False

    # -- caller API ---------------------------------------------------------------------
    @property
    def survivors(self) -> tuple[str, ...] | None:
        """The survivor list this silo signed (with every survivor of its group), once it answered the
        unmask step; None before."""
        return self._survivors if self.stage == Stage.DONE else None

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        if self.stage not in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT):
            raise SecureSumUsageError(f"silo {self.me!r}: set_inputs() after the masked input was sent")
        layout = Layout.of_inputs(inputs)
        flat = np.empty(layout.total, dtype=np.uint32)
        at = 0
        for name, size in zip(layout.names, layout.sizes):
            encode_into(inputs[name], flat[at : at + size], float(self.inst.config.clip), self.inst.frac_bits, name=f"input {name!r}")
            at += size
        self._inputs = (layout, flat)

    def start(self) -> list[Message]:
        if self.stage != Stage.ADVERTISE_KEYS or self._dead:
            raise SecureSumUsageError("start() called twice")
        self._c, self._s = keys.new_x25519(), keys.new_x25519()
        c_pk, s_pk = keys.x25519_public_bytes(self._c), keys.x25519_public_bytes(self._s)
        sig = signing.sign(self.identity.private_key, *self.inst.ctx(Stage.ADVERTISE_KEYS), self.me, c_pk, s_pk)
        self._own_keys = (c_pk, s_pk)
        self.stage = Stage.SHARE_KEYS
        return [self._msg(KeyAdvertisement, cipher_pk=c_pk, mask_pk=s_pk, signature=sig)]

    def handle(self, msg: Message) -> list[Message]:
        if self._dead or self.stage in (Stage.ADVERTISE_KEYS, Stage.DONE):
            raise CryptoError(f"message rejected (silo {self.me!r} at stage {self.stage.value})")
        step = {
            Stage.SHARE_KEYS: (KeyRoster, self._on_key_roster),
            Stage.MASKED_INPUT: (SharesRelay, self._on_shares),
            Stage.CONSISTENCY: (ConsistencyRequest, self._on_consistency),
            Stage.UNMASK: (UnmaskRequest, self._on_unmask),
        }[self.stage]
        try:
            check_envelope(msg, step[0], self.inst.round_id, self.inst.instance_id, AGGREGATOR)
            return step[1](msg)
        except (CryptoError, SecAggAborted):
            self._dead = True
            raise

    # -- steps ----------------------------------------------------------------------------
    def _msg(self, cls, **fields):
        return cls(round_id=self.inst.round_id, instance_id=self.inst.instance_id, sender=self.me, **fields)

    def _on_key_roster(self, msg: KeyRoster) -> list[Message]:
        inst, me = self.inst, self.me
        entries = msg.keys
        if not isinstance(entries, dict) or me not in entries or not set(entries) <= inst.group(me):
            raise CryptoError("key roster rejected")
        peers: dict[str, tuple[bytes, bytes]] = {}
        for v in sorted(entries):
            e = entries[v]
            if not (isinstance(e, tuple) and len(e) == 3 and all(isinstance(b, bytes) for b in e)):
                raise CryptoError("key roster rejected")
            c_pk, s_pk, sig = e
            signing.verify(inst.roster.members[v], sig, *inst.ctx(Stage.ADVERTISE_KEYS), v, c_pk, s_pk)
            peers[v] = (c_pk, s_pk)
        if peers[me] != self._own_keys:
            raise CryptoError("key roster rejected")
        all_keys = [k for pair in peers.values() for k in pair]
        if len(set(all_keys)) != len(all_keys):
            raise CryptoError("key roster rejected")
        if len(peers) < inst.t:
            raise SecAggAborted(f"silo {me!r}: {len(peers)} silos of its group advertised keys, threshold {inst.t}")
        if not inst.config.allow_dropouts and set(peers) != inst.group(me):
            raise SecAggAborted(f"silo {me!r}: its group did not all advertise keys, and this sum allows no dropouts")
        self._seed = os.urandom(32)
        holders = sorted(peers)
        xs = {v: inst.roster.point(v) for v in holders}
        s_shares = shamir.split(keys.x25519_private_bytes(self._s), inst.t, xs.values())
        b_shares = shamir.split(self._seed, inst.t, xs.values())
        self._peers = peers
        self._held_s = {me: s_shares[xs[me]]}
        self._held_b = {me: b_shares[xs[me]]}
        out = {}
        for v in holders:
            if v == me:
                continue
            pt = canonical(me, v) + shamir.share_to_bytes(s_shares[xs[v]]) + shamir.share_to_bytes(b_shares[xs[v]])
            key = inst.share_key(self._c, peers[v][0], me, v)
            out[v] = aead.seal(key, pt, *inst.share_context(me, v))
        self.stage = Stage.MASKED_INPUT
        return [self._msg(EncryptedShares, shares=out)]

    def _on_shares(self, msg: SharesRelay) -> list[Message]:
        inst, me = self.inst, self.me
        if self._inputs is None:
            raise SecureSumUsageError(f"silo {me!r}: set_inputs() must be called before the masked-input step")
        relayed = msg.shares
        if not isinstance(relayed, dict) or not set(relayed) <= set(self._peers) - {me}:
            raise CryptoError("shares rejected")
        held_s, held_b = dict(self._held_s), dict(self._held_b)
        for v in sorted(relayed):
            ct = relayed[v]
            if not isinstance(ct, bytes):
                raise CryptoError("shares rejected")
            key = inst.share_key(self._c, self._peers[v][0], me, v)
            pt = aead.open_sealed(key, ct, *inst.share_context(v, me))
            head = canonical(v, me)
            if len(pt) != len(head) + _SHARE_PT or pt[: len(head)] != head:
                raise CryptoError("shares rejected")
            body = pt[len(head) :]
            held_s[v] = shamir.share_from_bytes(body[: shamir.SHARE_BYTES])
            held_b[v] = shamir.share_from_bytes(body[shamir.SHARE_BYTES :])
        self._held_s, self._held_b = held_s, held_b
        alive = set(relayed) | {me}
        if len(alive) < inst.t:
            raise SecAggAborted(f"silo {me!r}: {len(alive)} silos of its group shared keys, threshold {inst.t}")
        if not inst.config.allow_dropouts and alive != inst.group(me):
            raise SecAggAborted(f"silo {me!r}: its group did not all share keys, and this sum allows no dropouts")
        layout, masked = self._inputs  # masked in place: the encoding is not needed again
        adds = [inst.self_key(self._seed, me)]
        subs = []
        for v in sorted(relayed):
            k = inst.pairwise_key(self._s, self._peers[v][1], me, v)
            (adds if inst.pairwise_sign(me, v) > 0 else subs).append(k)
        apply_masks(masked, adds, subs)
        self._alive = alive
        self._inputs = None
        self.stage = Stage.CONSISTENCY
        return [self._msg(MaskedInput, names=layout.names, shapes=layout.shapes, masked=masked)]

    def _on_consistency(self, msg: ConsistencyRequest) -> list[Message]:
        inst, me = self.inst, self.me
        survivors = check_ids(msg.survivors, inst.roster.ids, what="survivors")
        if me not in survivors or len(survivors) < inst.t:
            raise CryptoError("consistency request rejected")
        inst.check_no_dropouts(survivors, f"silo {me!r} at the consistency step")
        sig = signing.sign(self.identity.private_key, *inst.consistency_parts(me, survivors))
        self._survivors = survivors
        self.stage = Stage.UNMASK
        return [self._msg(ConsistencySignature, signature=sig)]

    def _on_unmask(self, msg: UnmaskRequest) -> list[Message]:
        inst, me = self.inst, self.me
        survivors = check_ids(msg.survivors, inst.roster.ids, what="survivors")
        dropped = check_ids(msg.dropped, inst.roster.ids, what="dropped")
        # One request per instance, on the survivor list this silo signed; never both seeds.
        if survivors != self._survivors or set(survivors) & set(dropped) or me in dropped:
            raise CryptoError("unmask request rejected")
        if dropped and not inst.config.allow_dropouts:
            raise CryptoError("unmask request rejected: this sum allows no dropouts, so no mask-key share is revealed")
        sigs = msg.signatures
        if not isinstance(sigs, dict) or not set(sigs) <= set(survivors):
            raise CryptoError("unmask request rejected")
        # every survivor this silo holds shares of (its group) must have signed the same list and view:
        # a survivor shown other public values signed another view, and its neighbours reveal nothing
        need = set(survivors) & inst.group(me)
        if not need <= set(sigs):
            raise SecAggAborted(f"silo {me!r}: no consistency signature from {sorted(need - set(sigs))}; "
                                "every survivor must sign the round's view")
        for v in sorted(need):
            if not isinstance(sigs[v], bytes):
                raise CryptoError("unmask request rejected")
            signing.verify(inst.roster.members[v], sigs[v], *inst.consistency_parts(v, survivors))
        b_out = {v: shamir.share_to_bytes(self._held_b[v]) for v in sorted(self._alive) if v in survivors}
        s_out = {v: shamir.share_to_bytes(self._held_s[v]) for v in sorted(self._alive) if v in dropped}
        self._held_s = self._held_b = None  # one answer per instance
        self._seed = self._s = self._c = None
        self.stage = Stage.DONE
        return [self._msg(UnmaskResponse, self_seed_shares=b_out, mask_key_shares=s_out)]


class SecAggAggregator(StepMachine):
    """Aggregator side of one SecAgg instance: relays, checks, unmasks the sum."""

    def __init__(self, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        self.inst = _Instance(roster, round_id, instance_id, config)
        super().__init__(Stage.ADVERTISE_KEYS, roster.ids, config.threshold)
        self.result: tuple[dict[str, np.ndarray], tuple[str, ...]] | None = None
        self._layout: Layout | None = None
        self._total: np.ndarray | None = None

    def _msg(self, cls, **fields):
        return cls(round_id=self.inst.round_id, instance_id=self.inst.instance_id, sender=AGGREGATOR, **fields)

    # -- accept: validate one message completely, return what to keep --------------------
    def _accept(self, stage, sender, msg):
        inst = self.inst
        if stage == Stage.ADVERTISE_KEYS:
            check_envelope(msg, KeyAdvertisement, inst.round_id, inst.instance_id, sender)
            if not all(isinstance(b, bytes) and len(b) == 32 for b in (msg.cipher_pk, msg.mask_pk)) or not isinstance(msg.signature, bytes):
                raise CryptoError(f"message rejected (from {sender!r} at stage {stage.value})")
            signing.verify(inst.roster.members[sender], msg.signature, *inst.ctx(Stage.ADVERTISE_KEYS), sender, msg.cipher_pk, msg.mask_pk)
            return msg
        if stage == Stage.SHARE_KEYS:
            check_envelope(msg, EncryptedShares, inst.round_id, inst.instance_id, sender)
            want = inst.graph[sender] & self.u1
            ok = isinstance(msg.shares, dict) and set(msg.shares) == want and all(
                isinstance(msg.shares[v], bytes) and len(msg.shares[v]) == inst.ciphertext_len(sender, v) for v in want
            )
            if not ok:
                raise CryptoError(f"message rejected (from {sender!r} at stage {stage.value})")
            return msg
        if stage == Stage.MASKED_INPUT:
            check_envelope(msg, MaskedInput, inst.round_id, inst.instance_id, sender)
            layout = Layout.from_wire(msg.names, msg.shapes)
            m = msg.masked
            ok = (
                isinstance(m, np.ndarray) and m.dtype == np.uint32 and m.ndim == 1 and m.size == layout.total
                and (self._layout is None or layout == self._layout)
            )
            if not ok:
                raise CryptoError(f"message rejected (from {sender!r} at stage {stage.value})")
            if self._total is None:
                self._layout, self._total = layout, np.zeros(layout.total, dtype=np.uint32)
            np.add(self._total, m, out=self._total)  # validated: now it may change state
            return None
        if stage == Stage.CONSISTENCY:
            check_envelope(msg, ConsistencySignature, inst.round_id, inst.instance_id, sender)
            if not isinstance(msg.signature, bytes):
                raise CryptoError(f"message rejected (from {sender!r} at stage {stage.value})")
            signing.verify(inst.roster.members[sender], msg.signature, *inst.consistency_parts(sender, self.u3))
            return msg.signature
        if stage == Stage.UNMASK:
            check_envelope(msg, UnmaskResponse, inst.round_id, inst.instance_id, sender)
            group = inst.group(sender)
            b, s = msg.self_seed_shares, msg.mask_key_shares
            ok = (
                isinstance(b, dict) and isinstance(s, dict)
                and set(b) <= group & set(self.u3) and set(s) <= group & (self.u2 - set(self.u3))
                and all(isinstance(x, bytes) and len(x) == shamir.SHARE_BYTES for x in (*b.values(), *s.values()))
            )
            if not ok:
                raise CryptoError(f"message rejected (from {sender!r} at stage {stage.value})")
            return msg
        raise CryptoError(f"message rejected (from {sender!r} at stage {stage.value})")

    # -- advance: end a step --------------------------------------------------------------
    def _advance(self, stage, answers):
        inst = self.inst
        if stage == Stage.ADVERTISE_KEYS:
            self.adverts = answers
            self.u1 = frozenset(answers)
            out = []
            for u in sorted(self.u1):
                keys_ = {v: (a.cipher_pk, a.mask_pk, a.signature) for v, a in answers.items() if v in inst.group(u)}
                out.append((u, self._msg(KeyRoster, keys=keys_)))
            return out, Stage.SHARE_KEYS, self.u1
        if stage == Stage.SHARE_KEYS:
            self.u2 = frozenset(answers)
            out = []
            for u in sorted(self.u2):
                relayed = {v: answers[v].shares[u] for v in sorted(self.u2 & inst.graph[u])}
                out.append((u, self._msg(SharesRelay, shares=relayed)))
            return out, Stage.MASKED_INPUT, self.u2
        if stage == Stage.MASKED_INPUT:
            self.u3 = tuple(sorted(answers))
            inst.check_no_dropouts(self.u3, "masked input")
            return [(u, self._msg(ConsistencyRequest, survivors=self.u3)) for u in self.u3], Stage.CONSISTENCY, self.u3
        if stage == Stage.CONSISTENCY:
            unsigned = sorted(set(self.u3) - set(answers))
            if unsigned:
                raise SecAggAborted(f"consistency: {', '.join(unsigned)} did not sign the survivor list and view; "
                                    "every survivor must; aborted, nothing revealed")
            dropped = tuple(sorted(self.u2 - set(self.u3)))
            # each silo gets the signatures of its own group only: what it checks (SecAgg+: O(k), not O(n))
            out = [(u, self._msg(UnmaskRequest, survivors=self.u3, dropped=dropped,
                                 signatures={v: answers[v] for v in sorted(inst.group(u) & set(answers))}))
                   for u in sorted(answers)]
            return out, Stage.UNMASK, answers
        if stage == Stage.UNMASK:
            self._unmask(answers)
            return [], Stage.DONE, ()
        raise AssertionError(stage)

    def _minimum(self, stage) -> int:
        # every input step needs the whole roster when dropouts are not allowed; the unmask step only
        # needs t shares of each seed (a silo silent there has its input in the sum already)
        return self.inst.t if stage == Stage.UNMASK else self.inst.minimum

    def _reconstruct(self, owner: str, answers, field: str) -> bytes:
        inst = self.inst
        shares = {}
        for u, resp in answers.items():
            raw = getattr(resp, field).get(owner)
            if raw is not None:
                shares[inst.roster.point(u)] = shamir.share_from_bytes(raw)
        if len(shares) < inst.t:
            raise SecAggAborted(f"only {len(shares)} shares of silo {owner!r}'s secret arrived, threshold {inst.t}")
        return shamir.combine(shares, inst.t)

    def _unmask(self, answers) -> None:
        inst = self.inst
        survivors, dropped = self.u3, sorted(self.u2 - set(self.u3))
        adds, subs = [], []
        for v in survivors:
            subs.append(inst.self_key(self._reconstruct(v, answers, "self_seed_shares"), v))
        for v in dropped:
            s_v = keys.x25519_from_private_bytes(self._reconstruct(v, answers, "mask_key_shares"))
            if keys.x25519_public_bytes(s_v) != self.adverts[v].mask_pk:
                raise CryptoError("reconstructed key does not match its advertisement")
            for u in survivors:
                if u in inst.graph[v]:
                    k = inst.pairwise_key(s_v, self.adverts[u].mask_pk, u, v)
                    # u applied sign(u, v) * PRG(k); undo it.
                    (subs if inst.pairwise_sign(u, v) > 0 else adds).append(k)
        total = self._total
        apply_masks(total, adds, subs)
        self._total = None
        parts = self._layout.split(total)
        sums = {n: decode_sum(a, inst.frac_bits) for n, a in parts.items()}
        self.result = (sums, survivors)
