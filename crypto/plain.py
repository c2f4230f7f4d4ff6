"""INSECURE plain sums for debugging: every silo's input reaches the aggregator in the clear.

Only reachable through ``SecureSumConfig(mode="plain", allow_insecure_plaintext=True)``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fedalign.crypto._common import Layout, StepMachine, check_envelope
from fedalign.crypto.config import SecureSumConfig
from fedalign.crypto.errors import CryptoError, SecAggAborted, SecureSumUsageError
from fedalign.crypto.identity import Roster
from fedalign.crypto.messages import Message, PlainInput, Stage
from fedalign.crypto.schemes import scheme_spec

__all__ = ["PlainSilo", "PlainAggregator"]


def _check(roster: Roster, config: SecureSumConfig) -> None:
    # the sum in the clear serves a scheme the table marks insecure (plain, or one registered as such)
    if not scheme_spec(config.mode).insecure or not config.allow_insecure_plaintext:
        raise SecureSumUsageError("plain protocol needs an insecure scheme (mode 'plain') and "
                                  "allow_insecure_plaintext=True")
    config.check_roster(roster.ids, 0, 0)


class PlainSilo:
    def __init__(self, identity, silo_id: str, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        _check(roster, config)
        if silo_id not in roster:
            raise SecureSumUsageError(f"silo {silo_id!r} is not in the roster")
        self.me, self.round_id, self.instance_id, self.config = silo_id, round_id, instance_id, config
        self.stage = Stage.PLAIN_INPUT
        self._inputs = None
        self._roster_ids = tuple(roster.ids)

    @property
    def survivors(self) -> tuple[str, ...] | None:
        """Plain sums verify nothing: the roster once the input left, when the sum allows no dropouts."""
        return self._roster_ids if self.stage == Stage.DONE and not self.config.allow_dropouts else None

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        layout = Layout.of_inputs(inputs)
        flat = layout.flatten(inputs, np.float64)
        if not np.all(np.abs(flat) <= self.config.clip):
            from fedalign.crypto.errors import EncodingOverflow

            raise EncodingOverflow(f"silo {self.me!r}: inputs exceed the declared clip {self.config.clip}")
        self._inputs = (layout, flat)

    def start(self) -> list[Message]:
        if self._inputs is None:
            raise SecureSumUsageError(f"silo {self.me!r}: plain mode needs set_inputs() before start()")
        layout, flat = self._inputs
        self.stage = Stage.DONE
        return [PlainInput(round_id=self.round_id, instance_id=self.instance_id, sender=self.me,
                           names=layout.names, shapes=layout.shapes, values=flat)]

    def handle(self, msg: Message) -> list[Message]:
        raise CryptoError(f"message rejected (silo {self.me!r} in plain mode expects none)")


class PlainAggregator(StepMachine):
    def __init__(self, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        _check(roster, config)
        super().__init__(Stage.PLAIN_INPUT, roster.ids, config.threshold)
        self.round_id, self.instance_id = round_id, instance_id
        self._need = config.minimum(len(roster))
        self.result = None
        self._layout, self._total = None, None

    def _accept(self, stage, sender, msg):
        check_envelope(msg, PlainInput, self.round_id, self.instance_id, sender)
        layout = Layout.from_wire(msg.names, msg.shapes)
        v = msg.values
        if not (isinstance(v, np.ndarray) and v.dtype == np.float64 and v.ndim == 1 and v.size == layout.total
                and (self._layout is None or layout == self._layout)):
            raise CryptoError(f"message rejected (from {sender!r} at stage {stage.value})")
        if self._total is None:
            self._layout, self._total = layout, np.zeros(layout.total)
        self._total += v
        return None

    def _advance(self, stage, answers):
        if len(answers) < self._need:
            raise SecAggAborted("plain sum: a silo is missing and this sum allows no dropouts")
        self.result = (self._layout.split(self._total), tuple(sorted(answers)))
        return [], Stage.DONE, ()
