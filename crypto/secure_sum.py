"""The recipe API: one silo's side and the aggregator's side of a secure sum, in any mode.

Transport-agnostic: messages in, messages out. The runtime delivers every message a silo
returns to the aggregator, and every (destination, message) the aggregator returns to that
silo; at a step's deadline it calls ``AggregatorSecureSum.close_step()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fedalign.crypto.config import SecureSumConfig
from fedalign.crypto.errors import SecureSumUsageError
from fedalign.crypto.identity import IdentityKey, Roster
from fedalign.crypto.messages import Message, Stage
from fedalign.crypto.schemes import scheme_spec

__all__ = ["SecureSumResult", "SiloSecureSum", "AggregatorSecureSum"]


@dataclass(frozen=True)
class SecureSumResult:
    """The element-wise sums (float64, original shapes) over exactly the silos in ``included``."""

    sums: dict[str, np.ndarray]
    included: tuple[str, ...]


def _protocols(mode: str):
    return scheme_spec(mode).protocols()


class SiloSecureSum:
    """A silo's side of one secure-sum instance (fresh keys every instance).

    Call ``set_inputs`` (before ``start`` in plain mode; in secagg/ckks any time before the
    input step arrives), send what ``start()`` returns, then pass every message from the
    aggregator to ``handle`` and send what it returns. ``CryptoError``/``SecAggAborted``
    end the instance.
    """

    def __init__(self, identity: IdentityKey, silo_id: str, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        if not isinstance(config, SecureSumConfig):
            raise SecureSumUsageError("config must be a SecureSumConfig")
        self._impl = _protocols(config.mode)[0](identity, silo_id, roster, round_id, instance_id, config)
        self.silo_id = silo_id

    def set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Named float arrays (any shapes) with every |value| <= config.clip."""
        self._impl.set_inputs(inputs)

    def start(self) -> list[Message]:
        return self._impl.start()

    def handle(self, msg: Message) -> list[Message]:
        return self._impl.handle(msg)

    @property
    def stage(self) -> Stage:
        """The step whose message this silo expects next (DONE when finished)."""
        return self._impl.stage

    @property
    def done(self) -> bool:
        """True when this silo has nothing more to send (in ckks, one silo may still be
        asked to decrypt the sum)."""
        return getattr(self._impl, "done", self._impl.stage == Stage.DONE)

    @property
    def survivors(self) -> tuple[str, ...] | None:
        """The silos whose input the sum holds, as this silo verified them (secagg: the survivor list
        every survivor of its group signed, once it answered the unmask step; ckks and plain: the
        roster, once its input left, when the sum allows no dropouts); None while unknown."""
        return self._impl.survivors


class AggregatorSecureSum:
    """The aggregator's side of one secure-sum instance.

    ``handle(sender, msg)`` validates a message completely before it changes any state; a
    rejected message raises ``CryptoError`` and leaves the instance as it was (the runtime
    may treat that sender as a dropout). When every expected silo has answered, ``handle``
    ends the step itself and returns the next messages; at a deadline call ``close_step()``.
    """

    def __init__(self, roster: Roster, round_id: int, instance_id: int, config: SecureSumConfig):
        if not isinstance(config, SecureSumConfig):
            raise SecureSumUsageError("config must be a SecureSumConfig")
        self._impl = _protocols(config.mode)[1](roster, round_id, instance_id, config)

    def handle(self, sender: str, msg: Message) -> list[tuple[str, Message]]:
        return self._impl.handle(sender, msg)

    def close_step(self) -> list[tuple[str, Message]]:
        """End the current step with whoever answered (silent silos become dropouts).

        Raises ``SecAggAborted`` (and the instance is over) when fewer than t answered.
        """
        return self._impl.close_step()

    @property
    def stage(self) -> Stage:
        return self._impl.stage

    @property
    def waiting_for(self) -> frozenset[str]:
        """Silos whose answer the current step still expects."""
        return self._impl.waiting_for

    @property
    def done(self) -> bool:
        return self._impl.stage == Stage.DONE and self._impl.result is not None

    @property
    def result(self) -> SecureSumResult:
        if not self.done:
            raise SecureSumUsageError(f"secure sum not finished (stage {self._impl.stage.value})")
        sums, included = self._impl.result
        return SecureSumResult(sums=sums, included=included)
