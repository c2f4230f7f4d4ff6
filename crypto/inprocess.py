"""Run a whole secure sum in one process over the real protocol and real message objects.

For tests and simulations: every message crosses a generic encode/decode (fields only), so
what works here works over any transport that carries the same fields.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fedalign.crypto.config import SecureSumConfig
from fedalign.crypto.errors import SecAggAborted
from fedalign.crypto.identity import IdentityKey, Roster, generate_identity
from fedalign.crypto.messages import MESSAGE_TYPES, Message, Stage, check_wire_types
from fedalign.crypto.secure_sum import AggregatorSecureSum, SecureSumResult, SiloSecureSum

__all__ = ["secure_sum_inprocess"]

_ORDER = list(Stage)


def _over_the_wire(msg: Message) -> Message:
    check_wire_types(msg)
    fields = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in msg.fields().items()}
    return MESSAGE_TYPES[type(msg).__name__](**fields)


def secure_sum_inprocess(
    inputs: Mapping[str, Mapping[str, np.ndarray]],
    config: SecureSumConfig,
    *,
    drop: Mapping[str, Stage | str] | None = None,
    round_id: int = 0,
    instance_id: int = 0,
    identities: Mapping[str, IdentityKey] | None = None,
    silo_configs: Mapping[str, SecureSumConfig] | None = None,
) -> SecureSumResult:
    """Securely sum ``inputs`` (silo_id -> name -> array) under ``config``.

    ``drop`` maps a silo to the stage from which it goes silent (e.g. ``Stage.MASKED_INPUT``:
    it answers the earlier steps, then never again). Raises ``SecAggAborted`` when too few
    silos survive. Identities are generated fresh unless given.
    """
    silent_from = {k: _ORDER.index(Stage(v)) for k, v in (drop or {}).items()}
    ids = sorted(inputs)
    identities = dict(identities) if identities is not None else {s: generate_identity() for s in ids}
    roster = Roster({s: identities[s].public_bytes for s in ids})
    agg = AggregatorSecureSum(roster, round_id, instance_id, config)

    def silent(s: str) -> bool:
        return silo_of_stage.get(s, len(_ORDER)) <= _ORDER.index(agg.stage)

    silo_of_stage = silent_from
    # ``silo_configs``: a silo's own config where it differs from the aggregator's (tests: another view)
    silos = {s: SiloSecureSum(identities[s], s, roster, round_id, instance_id, (silo_configs or {}).get(s, config))
             for s in ids}
    outbox: list[tuple[str, Message]] = []
    for s in ids:
        silos[s].set_inputs(inputs[s])
        if not silent(s):
            outbox.extend((s, m) for m in silos[s].start())
    while not agg.done:
        replies: list[tuple[str, Message]] = []
        for s, m in outbox:
            replies.extend(agg.handle(s, _over_the_wire(m)))
        outbox = []
        if not replies and not agg.done:
            replies = agg.close_step()
        for dest, m in replies:
            if silent(dest):
                continue  # a dropped silo hears and says nothing any more
            try:
                answer = silos[dest].handle(_over_the_wire(m))
            except SecAggAborted:  # the silo gave up on its own: a dropout from here on
                silo_of_stage[dest] = _ORDER.index(agg.stage)
                continue
            outbox.extend((dest, a) for a in answer)
    return agg.result


