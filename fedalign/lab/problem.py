"""What the simulator needs from a federated learning problem: init, one silo's local round, evaluation.

Implemented by the synthetic toy (:mod:`simulation.toy`) and by the embedded world through the
silo trainer (:mod:`simulation.world`). A problem owns its randomness (seeded at construction).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from fedalign.fedcmp.strategy import Tensors

__all__ = ["FederatedProblem", "LocalResult"]


class LocalResult(NamedTuple):
    """One silo's local round: its update Δ_k, the samples it used, its mean training loss."""

    delta: Tensors
    n_samples: int
    train_loss: float = float("nan")


@runtime_checkable
class FederatedProblem(Protocol):
    """A set of silos with private data, a projector to train and held-out metrics."""

    n_silos: int
    unreliable: tuple[int, ...]  # silos known (to the experimenter only) to hold corrupted data

    def init_params(self) -> Tensors:
        """The round-0 global projector parameters."""

    def local_update(self, params: Tensors, silo: int, round: int, prox_mu: float) -> LocalResult:
        """Silo ``silo`` trains from ``params`` on its round-``round`` shard; returns Δ_k and sizes."""

    def evaluate(self, params: Tensors) -> dict[str, float]:
        """Held-out metrics of ``params``: at least ``nll``; ``mc_accuracy``, ``presence_f1`` if known."""
