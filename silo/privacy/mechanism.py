"""The DP mechanism on the projector: Opacus clipping and noise, Poisson sampling, the noise's generators.

Training (:class:`DPProjectorTrainer`): Opacus wraps *only the projector*. The frozen LM is
run once per step on a detached copy of the projector output ``z``; its backward gives
``G_i = dL_i/dz_i`` per sample (sample i's loss depends on row i only). The surrogate
``s_i = <z_i, G_i>`` has exactly ``dL_i/dθ`` as its gradient, so Opacus' per-sample clipping
(ghost clipping by default, or materialised per-sample gradients) runs its two backward passes
through the projector alone and the LM's backward is paid once, as in a non-private step.

Randomness: DP noise and Poisson sampling come from generators seeded by ``os.urandom``. The
run's reproducibility seed reaches them only through ``insecure_seeded_noise`` (tests), which
warns loudly. Opacus' ``secure_mode`` needs torchcsprng (not installable here): the generator
is torch's Mersenne Twister, OS-seeded, not a CSPRNG (see docs/silo.md).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Literal

import torch
from torch import nn

from fedalign.protocol.errors import PrivacyError

# Opacus' hooks sit on the projector, whose input (cached tower features) needs no gradient.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

__all__ = ["DPProjectorTrainer", "os_seeded_generator", "dp_generator", "poisson_batches", "CLIP_FAR_ABOVE",
           "clip_hint"]

CLIP_FAR_ABOVE = 10.0
"""The round's hint fires when the clip norm C is this many times the median per-sample gradient norm.

The noise per step is σ·C whatever the gradients; the signal is at most the gradients' own norm. With
C 10× the typical gradient, 90% of the noise is spent on norm no sample has: on both real-data examples
the median sat ~100× below C = 1 and DP moved nothing until C came down to it (examples/clipart)."""


def clip_hint(metrics: dict, max_grad_norm: float) -> str | None:
    """One line for the silo's operator when the clip norm is far above the round's per-sample
    gradient norms (``metrics["grad_norm_median"]``, local: never sent); None otherwise."""
    med = metrics.get("grad_norm_median")
    if not isinstance(med, float) or not med > 0 or max_grad_norm < CLIP_FAR_ABOVE * med:
        return None
    return (f"the median per-sample gradient norm ({med:.3g}) is {max_grad_norm / med:.0f}x below the clip norm "
            f"privacy.max_grad_norm = {max_grad_norm:g}, and the noise is set by the clip: "
            f"{metrics.get('clipped_fraction', 0.0):.0%} of the gradients reached it. A clip near the median "
            f"(about {med:.2g}) keeps ε and cuts the noise on the signal about {max_grad_norm / med:.0f}x; choose it "
            "on public data (this figure comes from private records and stays on this silo)")


def os_seeded_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with 64 bits from the OS (never from the run's seed)."""
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))


def dp_generator(insecure_seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for DP noise / sampling: OS-seeded, or ``insecure_seed`` with a loud warning."""
    if insecure_seed is None:
        return os_seeded_generator(device)
    warnings.warn("INSECURE: DP noise and sampling are seeded from the run seed "
                  "(privacy.insecure_seeded_noise); the noise can be subtracted. Tests only.",
                  RuntimeWarning, stacklevel=2)
    return torch.Generator(device=device).manual_seed(int(insecure_seed))


def poisson_batches(n: int, sample_rate: float, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` Poisson batches over ``range(n)``: each index joins each batch with prob ``q``.

    Batches vary in size and may be empty; that is what the accountant's amplification assumes.
    """
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample rate must be in (0, 1], got {sample_rate}")
    draws = torch.rand(steps, n, generator=generator) < sample_rate
    return [row.nonzero().flatten() for row in draws]


class DPProjectorTrainer:
    """Opacus on the projector only: per-sample clipping, Gaussian noise, one optimizer step.

    ``clipping='ghost'`` uses Opacus' ghost clipping (norms without per-sample gradients);
    ``'per_sample'`` materialises per-sample gradients (Opacus hooks). Both see the surrogate
    loss described in the module docstring, so the frozen LM is traversed once per step.

    ``group`` (one rank of a torchrun silo, a :class:`silo.distributed.Group`): Opacus'
    ``DistributedDPOptimizer`` classes; each rank clips its own samples, rank 0 alone adds the
    noise, and :meth:`step` sums the ranks' gradients. ``expected_batch_size`` is the *global*
    one; each rank divides by its share and Opacus' reduction by the world size, so the step is
    (Σ clipped + one noise draw) / expected batch, as in one process.
    """

    def __init__(self, projector: nn.Module, optimizer: torch.optim.Optimizer, *, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: int, generator: torch.Generator,
                 clipping: Literal["ghost", "per_sample"] = "ghost", group: Any = None):
        from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
        from opacus.optimizers import (DistributedDPOptimizer, DistributedDPOptimizerFastGradientClipping,
                                       DPOptimizer, DPOptimizerFastGradientClipping)

        self.clipping = clipping
        self.group = group
        self.max_grad_norm = float(max_grad_norm)
        self._norms: list[torch.Tensor] = []  # per-sample gradient norms of this round (local diagnostics)
        distributed = group is not None
        self.params = [p for p in projector.parameters() if p.requires_grad]
        # each rank's share of the expected batch; Opacus divides the reduced sum by the world size
        per_rank = expected_batch_size / group.world if distributed else expected_batch_size
        kw = dict(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                  expected_batch_size=per_rank, loss_reduction="mean", generator=generator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns that secure_mode is off; docs/silo.md says why
            if clipping == "ghost":
                self.module = GradSampleModuleFastGradientClipping(
                    projector, batch_first=True, loss_reduction="sum", max_grad_norm=max_grad_norm,
                    use_ghost_clipping=True)
                self.optimizer = (DistributedDPOptimizerFastGradientClipping if distributed
                                  else DPOptimizerFastGradientClipping)(optimizer, **kw)
            elif clipping == "per_sample":
                self.module = GradSampleModule(projector, batch_first=True, loss_reduction="sum")
                self.optimizer = (DistributedDPOptimizer if distributed else DPOptimizer)(optimizer, **kw)
            else:
                raise PrivacyError(f"privacy.clipping must be 'ghost' or 'per_sample', got {clipping!r}")

    def backward(self, features: torch.Tensor, nll_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Clipped per-sample gradients into the projector; returns the per-sample losses.

        ``nll_fn(z)`` maps projector outputs (B, N, d) to per-sample losses (B,).
        """
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        p = self.params[0]
        z = self.module(features.to(p.device, p.dtype))
        z_leaf = z.detach().requires_grad_(True)
        losses = nll_fn(z_leaf)
        (g,) = torch.autograd.grad(losses.sum(), z_leaf)
        surrogate = (z * g).flatten(1).sum(1)  # d s_i / dθ == d L_i / dθ
        if self.clipping == "ghost":
            DPTensorFastGradientClipping(self.module, self.optimizer, surrogate, "sum").backward()
            norms = self.module.per_sample_gradient_norms
        else:
            surrogate.sum().backward()
            norms = torch.stack([q.grad_sample.flatten(1).norm(dim=1) for q in self.params], dim=1).norm(dim=1)
        self._norms.append(norms.detach().float().cpu())
        return losses.detach()

    def gradient_norms(self) -> dict[str, float]:
        """The round's per-sample gradient norms before clipping: their median and the share that
        reached the clip norm. Computed from raw records: for this silo's operator, never sent."""
        if not self._norms:
            return {}
        n = torch.cat(self._norms)
        return {"grad_norm_median": float(n.median()),
                "clipped_fraction": float((n >= self.max_grad_norm).float().mean())}

    def empty_batch(self) -> None:
        """A Poisson batch with no records still takes a (pure-noise) step."""
        for q in self.params:
            q.grad = torch.zeros_like(q)
            if self.clipping == "per_sample":
                q.grad_sample = torch.zeros((0, *q.shape), device=q.device, dtype=q.dtype)

    def accumulate(self) -> None:
        """End of a physical micro-batch that is not the last of its logical (Poisson) batch: keep the
        clipped per-sample gradient sum, add no noise, take no step (Opacus' skip-step mechanism)."""
        self.optimizer.signal_skip_step(True)
        self.optimizer.pre_step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, extra_grad: Callable[[], None] | None = None) -> None:
        """Noise, scale and step; ``extra_grad`` adds data-independent terms (FedProx) after noise
        (and after the ranks' gradients are summed: it is added once)."""
        if self.optimizer.pre_step():
            if self.group is not None:  # all-reduce: Σ ranks' clipped sums + rank 0's noise
                self.group.guard("all-reduce of the DP gradients", self.optimizer.reduce_gradients)
            if extra_grad is not None:
                extra_grad()
            self.optimizer.original_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Remove Opacus' hooks so the projector is a plain module again."""
        self.module._close()
