"""Witnessed heads and the closing exchange: what makes a cut-off ledger detectable.

What a hash chain cannot show on its own is that the newest entries were cut off: a prefix of
a valid ledger is a valid ledger. :meth:`Ledger.head <fedalign.compliance.ledger.Ledger.head>`
returns the signed head (index, digest, signature) of the last entry; a peer keeps it
(``Ledger.record_witness`` writes it into the peer's own ledger), and
:func:`fedalign.compliance.verifier.verify` with ``witnessed_heads=`` then fails when the ledger no
longer reaches a head someone witnessed, or holds another entry at that index.

No unwitnessed tail: the entries after the last head a peer witnessed could still be cut. A
run therefore closes its ledger with the peer: after :class:`RunEnd` the silo sends its final
head (its ``run_end`` written), the aggregator records it as a *final* witness and answers with a
*receipt*, its Ed25519 signature over (silo, index, digest), plus its own head after its
``run_end``; the silo records both in one closing entry (``Ledger.record_receipt``). That entry
certifies itself (the peer's signature covers the entry before it), so it is the one entry that
may follow the last witnessed head. :func:`fedalign.compliance.verifier.verify_ledger` reports any
other entry of a federated run after the last witnessed head as an *unwitnessed tail*, refused
unless ``allow_unwitnessed_tail`` (a silo that crashed or lost its connection before closing).
"""

from __future__ import annotations

import os

from typing import Any

from fedalign.compliance.entries import (_HEAD_CONTEXT, _RECEIPT_CONTEXT, LedgerError, LedgerHead, _sign,
                                         _signature_ok, read_ledger)

__all__ = ["WITNESS_KIND", "RECEIPT_FIELD", "FINAL_FIELD", "verify_head", "sign_receipt", "receipt_ok",
           "witnessed_heads", "final_heads"]

WITNESS_KIND = "witnessed_head"
RECEIPT_FIELD = "receipt"  # in a witnessed_head entry: the peer's receipt for this ledger's own head
FINAL_FIELD = "final"  # in a witnessed_head entry: the peer's closing head, for which a receipt went out


def verify_head(head: LedgerHead, public_key: bytes) -> None:
    """Raise LedgerError unless ``head`` is signed by ``public_key`` (the ledger owner's identity)."""
    if not head.signature or not _signature_ok(public_key, head.signature, _HEAD_CONTEXT, head.index, head.digest):
        raise LedgerError(f"ledger head {head.index} is not signed by the ledger's owner", index=head.index)


def sign_receipt(identity: Any, owner: str, head: LedgerHead) -> bytes:
    """The witness's receipt for ``owner``'s closing ``head``: its Ed25519 signature over the three."""
    return _sign(identity, _RECEIPT_CONTEXT, owner, head.index, head.digest)


def receipt_ok(public_key: bytes, owner: str, index: int, digest: str, signature: bytes) -> bool:
    """Whether ``signature`` is the witness's (``public_key``) receipt for ``owner``'s entry ``index``."""
    return bool(signature) and _signature_ok(public_key, signature, _RECEIPT_CONTEXT, owner, index, digest)



def witnessed_heads(path: str | os.PathLike, node: str) -> list[LedgerHead]:
    """The heads of ``node``'s ledger that the ledger at ``path`` recorded as witnessed."""
    out = []
    for e in read_ledger(path):
        if e.kind == WITNESS_KIND and e.fields.get("node") == node:
            out.append(LedgerHead.from_wire({k: e.fields.get(k) for k in ("index", "digest", "signature")}))
    return out


def final_heads(path: str | os.PathLike, node: str) -> list[int]:
    """The entries of ``node``'s ledger for which the ledger at ``path`` recorded a closing head
    (and so gave a receipt): ``node``'s ledger must hold a receipt for each."""
    return [e.fields["index"] for e in read_ledger(path)
            if e.kind == WITNESS_KIND and e.fields.get("node") == node and e.fields.get(FINAL_FIELD) is True
            and type(e.fields.get("index")) is int]

