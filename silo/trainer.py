"""Local training of the projector on one round's shard: the unit the federation calls.

``LocalTrainer.train_round(global_params, shard)`` loads θ_t, trains on the shard (plain or
DP), and returns Δ = θ_k − θ_t with the sample count, metrics and ε spent. No file or network
I/O happens inside; the frozen tower's features are computed once per shard
(:func:`prepare_shard`) and batches are row slices of pre-tokenised tensors. The same class
gives the centralized and local-only references (:func:`train_rounds`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from fedalign.protocol.errors import PrivacyError
from fedalign.silo.data import Sample, open_image
from fedalign.silo.model import AlignmentModel, TokenBatch
from fedalign.silo.privacy import (Admission, DPPlan, DPProjectorTrainer, DPSettings, PrivacyAccountant, RoundCharge,
                                   dp_generator, plan_for, poisson_batches)

__all__ = ["TrainSettings", "ShardData", "RoundResult", "LocalTrainer", "prepare_shard",
           "feature_device", "train_rounds", "Params"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int = 32
    lr: float = 2e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    local_steps: int | None = None
    local_epochs: float = 1.0
    physical_batch_size: int | None = None  # memory bound: a logical batch runs as micro-batches of this size

    def steps_for(self, n: int) -> int:
        """Optimizer steps for a shard of ``n`` records."""
        if self.local_steps is not None:
            return self.local_steps
        return max(1, math.ceil(self.local_epochs * n / self.batch_size))


@dataclass
class ShardData:
    """One shard ready for training: cached tower features and pre-tokenised rows."""

    features: torch.Tensor  # (n, N, d_v) on the model's device
    tokens: TokenBatch  # (n, L_max), on the model's device
    lengths: torch.Tensor  # (n,) true row lengths (CPU)
    pass_index: int = 0
    shard_index: int = 0
    offset: int = 0  # a multi-process silo: this rank holds rows [offset, offset + len) of the shard
    total: int | None = None  # the whole shard's size (None: this object holds the whole shard)

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def size(self) -> int:
        """Records in the whole shard (what the batches index and the accountant sees)."""
        return len(self) if self.total is None else self.total

    def owned(self, idx: torch.Tensor) -> torch.Tensor:
        """The members of a global batch ``idx`` this object holds, as local row indices."""
        if self.total is None:
            return idx
        return idx[(idx >= self.offset) & (idx < self.offset + len(self))] - self.offset

    def micro_batches(self, idx: torch.Tensor, size: int | None) -> list[torch.Tensor]:
        """``idx`` as memory-bounded micro-batches of at most ``size`` rows (None: one batch).

        Rows are grouped by length, so that each micro-batch pads to a shorter longest row: about a
        quarter fewer tokens through the LM at 256 rows in parts of 128. Per-sample losses, their
        clipped gradients and the step they sum into do not depend on the grouping.
        """
        if not len(idx):
            return []
        if not size or len(idx) <= size:
            return [idx]
        by_length = idx[torch.argsort(self.lengths[idx.cpu()], stable=True).to(idx.device)]
        return list(by_length.tensor_split(-(-len(idx) // size)))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, TokenBatch]:
        """Rows ``idx`` trimmed to their longest row (right padding only).

        Features kept in host memory (a shard too large for the GPU) are gathered into pinned
        memory and copied asynchronously to the tokens' device.
        """
        L = int(self.lengths[idx.cpu()].max())
        t = self.tokens
        dev = t.input_ids.device
        if self.features.device != dev:
            feats = self.features[idx.cpu()]
            if dev.type == "cuda":
                feats = feats.pin_memory()
            feats = feats.to(dev, non_blocking=True)
        else:
            feats = self.features[idx.to(dev)]
        idx = idx.to(dev)
        return feats, TokenBatch(t.input_ids[idx, :L], t.attention_mask[idx, :L],
                                 t.image_mask[idx, :L], t.target_mask[idx, :L])


def _as_image(x: Any, origin: str):
    return x if isinstance(x, np.ndarray) else open_image(x, origin)


def feature_device(model: AlignmentModel, n: int, *, gpu_fraction: float = 0.25) -> torch.device:
    """Where ``n`` cached tower features live: the model's device, unless that is a GPU whose
    free memory they would take more than ``gpu_fraction`` of; then host memory (pinned per batch)."""
    dev = model.device
    if dev.type != "cuda":
        return dev
    item = torch.empty((), dtype=model.vision.dtype).element_size()
    need = n * model.n_image_tokens * model.vision.hidden_size * item
    free, _ = torch.cuda.mem_get_info(dev)
    return dev if need <= gpu_fraction * free else torch.device("cpu")


def prepare_shard(model: AlignmentModel, samples: Sequence[Sample], *, pass_index: int = 0,
                  shard_index: int = 0, batch_size: int = 64, offset: int = 0,
                  total: int | None = None) -> ShardData:
    """Decode images, run the frozen tower once (the cache), tokenise every record.

    The cache stays on the GPU when it fits (:func:`feature_device`), else in host memory.
    ``offset``/``total``: ``samples`` are rows ``[offset, offset + len)`` of a ``total``-row shard
    (one rank's slice in a multi-process silo).
    """
    images = [_as_image(s.image, s.origin) for s in samples]
    where = feature_device(model, len(images))
    if where == model.device:
        feats = model.encode_images(images, batch_size=batch_size)
    else:
        feats = torch.cat([model.encode_images(images[i : i + batch_size], batch_size=batch_size).to(where)
                           for i in range(0, len(images), batch_size)])
    texts = [model.encode_text(s.prompt, s.caption) for s in samples]
    tokens = model.collate(texts)
    return ShardData(feats, tokens, tokens.attention_mask.sum(1).cpu(), pass_index, shard_index, offset, total)


@dataclass
class RoundResult:
    """What a round hands back: the update, how many records it used, metrics, privacy spent.

    Only ``delta`` (and what is computed from it) is covered by DP; ``metrics`` such as
    ``train_loss`` are computed on raw records and must stay on the silo.
    """

    delta: Params
    n_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    epsilon: float | None = None
    charge: RoundCharge | None = None


class LocalTrainer:
    """Trains the model's projector from given global parameters on one shard at a time.

    With ``dp`` set, an ``accountant`` is required: the round's charge is admitted once, before any
    compute (:meth:`admit`, which a caller that draws shards calls before drawing one), and committed
    before the update is returned (fail closed: on :class:`PrivacyBudgetExceeded` no update exists
    outside this call). ``plan``: the run's :class:`DPPlan` when the caller derived it already (the
    session, before any model loaded); otherwise :meth:`plan_dp` derives it, once.

    ``group`` (:mod:`silo.distributed`): one rank of a multi-process silo. Rank 0 draws the
    logical batches (as one process would) and broadcasts them; each rank trains on the members
    of its shard slice; gradients are summed over the ranks; DP noise is added once, on rank 0;
    only rank 0 checks and charges the accountant (the others plan with an unsaved one).
    """

    def __init__(self, model: AlignmentModel, settings: TrainSettings, *, dp: DPSettings | None = None,
                 accountant: PrivacyAccountant | None = None, generator: torch.Generator | None = None,
                 group: Any = None, plan: DPPlan | None = None, basis: Params | None = None):
        if dp is not None and accountant is None:
            raise PrivacyError("DP training needs a PrivacyAccountant (the budget must be checked)")
        self.model = model
        self.settings = settings
        self.dp = dp
        self.accountant = accountant
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._dp_gen = dp_generator(dp.insecure_seed, model.device) if dp else None
        self._sample_gen = dp_generator(None if dp.insecure_seed is None else dp.insecure_seed + 1) if dp else None
        self.group = group
        self.basis = basis or None  # the run's fixed public basis (silo.subspace): every round trains in it
        self.dp_plan: DPPlan | None = None
        if plan is not None and dp is not None:  # the run's plan, completed with how many values this model noises
            self.dp_plan = plan if plan.n_params else replace(plan, n_params=self._noised_values())

    @property
    def is_main(self) -> bool:
        return self.group is None or self.group.is_main

    # -- planning -------------------------------------------------------------------------
    def _noised_values(self) -> int:
        if self.basis:
            from fedalign.silo.subspace import SubspaceProjector

            return SubspaceProjector(self.model.projector, self.basis).trainable_numel()
        return sum(p.numel() for p in self.model.projector.parameters())

    def plan_dp(self, shard_sizes: Sequence[int]) -> DPPlan | None:
        """Fix the run's DP schedule for shards of ``shard_sizes`` (None without DP): σ from the budget
        (or the override, refused when it cannot meet the budget). Call before training, unless the plan
        was given; a trainer without one plans, once, for its first round's shard size."""
        if self.dp is None:
            return None
        assert self.accountant is not None
        self.dp_plan = plan_for(self.dp, self.accountant, self.settings, list(shard_sizes),
                                n_params=self._noised_values())
        return self.dp_plan

    @property
    def noise_multiplier(self) -> float | None:
        return self.dp_plan.noise_multiplier if self.dp_plan is not None else None

    def plan(self, n: int, *, pass_index: int = 0, shard_index: int = 0) -> RoundCharge | None:
        """The DP charge a round on ``n`` records would make (None without DP)."""
        if self.dp is None:
            return None
        if self.dp_plan is None:
            self.plan_dp([n])
        assert self.dp_plan is not None
        return RoundCharge(self.dp_plan.noise_multiplier, min(1.0, self.settings.batch_size / n),
                           self.settings.steps_for(n), pass_index, shard_index, n)

    def admit(self, n: int, *, pass_index: int = 0, shard_index: int = 0) -> Admission | None:
        """The round's one budget check: the charge of a round on ``n`` records, admitted by the
        accountant (PrivacyBudgetExceeded when it would pass the budget); None without DP and on a rank
        other than 0 (rank 0 alone holds the budget)."""
        charge = self.plan(n, pass_index=pass_index, shard_index=shard_index)
        if charge is None or not self.is_main:
            return None
        assert self.accountant is not None
        return self.accountant.admit(charge)

    def _batches(self, n: int, steps: int) -> list[torch.Tensor]:
        if self.dp is not None:  # Poisson sampling: what the accountant assumes
            assert self._sample_gen is not None
            return poisson_batches(n, min(1.0, self.settings.batch_size / n), steps, self._sample_gen)
        out: list[torch.Tensor] = []
        B = min(self.settings.batch_size, n)
        perm = torch.randperm(n, generator=self.generator)
        pos = 0
        while len(out) < steps:  # shuffled fixed-size batches, a fresh order each epoch
            if pos + B > n:
                perm, pos = torch.randperm(n, generator=self.generator), 0
            out.append(perm[pos : pos + B])
            pos += B
        return out

    def _optimizer(self, params) -> torch.optim.Optimizer:
        s = self.settings
        if s.optimizer == "sgd":
            return torch.optim.SGD(params, lr=s.lr, weight_decay=s.weight_decay)
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)

    # -- the round --------------------------------------------------------------------------
    def train_round(self, global_params: Params, shard: ShardData, *, basis: Params | None = None,
                    admitted: Admission | None = None, prox_mu: float = 0.0) -> RoundResult:
        """Train from ``global_params`` on ``shard``; return Δ, count, metrics, ε (charged).

        ``basis`` (weight name -> U, m×r, public and shared): train those weights only as
        W_t + U·C (:mod:`silo.subspace`); under DP the noise then lives in r·n dimensions. Without
        it, the trainer's own fixed ``basis`` (given at construction), if any.
        ``admitted``: this round's charge as :meth:`admit` returned it before the shard was drawn;
        without it the round is admitted here, before any compute.
        ``prox_mu``: the round strategy's FedProx weight (``Strategy.prox_mu``; 0 for the others),
        so a federated silo trains with the μ the aggregator's strategy names, as the lab does."""
        model, s = self.model, self.settings
        basis = basis or self.basis
        if basis and prox_mu > 0:
            raise PrivacyError("FedProx with subspace training is not supported")
        n = shard.size
        steps = s.steps_for(n)
        if admitted is None:
            admitted = self.admit(n, pass_index=shard.pass_index, shard_index=shard.shard_index)
        elif (admitted.charge.shard_size, admitted.charge.pass_index, admitted.charge.shard_index) != (
                n, shard.pass_index, shard.shard_index):
            raise PrivacyError(f"the round was admitted for {admitted.charge.shard_size} records of shard "
                               f"{admitted.charge.shard_index} (pass {admitted.charge.pass_index}), not for this shard")
        charge = admitted.charge if admitted is not None else self.plan(n, pass_index=shard.pass_index,
                                                                        shard_index=shard.shard_index)
        was_training = model.projector.training
        model.projector.train()  # Opacus' hooks record activations in train mode only
        try:
            return self._train(global_params, shard, basis, n, steps, charge, admitted, prox_mu)
        finally:
            model.projector.train(was_training)

    def _train(self, global_params: Params, shard: ShardData, basis: Params | None, n: int, steps: int,
               charge: RoundCharge | None, admitted: Admission | None, prox_mu: float) -> RoundResult:
        model, s, group = self.model, self.settings, self.group
        model.load_projector_state(global_params)
        anchor = model.projector_state()  # clones: the parameters change in place below
        net: torch.nn.Module = model.projector
        if basis:
            from fedalign.silo.subspace import SubspaceProjector

            net = SubspaceProjector(model.projector, basis)
        params = [p for p in net.parameters() if p.requires_grad or not basis]
        for p in params:
            p.requires_grad_(True)
        opt = self._optimizer(params)
        opt.zero_grad(set_to_none=True)  # a gradient left on the projector by other code must not enter step 1
        named = list(model.projector.named_parameters())
        prox = self._prox(named, anchor, prox_mu) if prox_mu > 0 else None
        dp = None
        if self.dp is not None:
            assert self._dp_gen is not None
            assert charge is not None
            dp = DPProjectorTrainer(net, opt, noise_multiplier=charge.noise_multiplier,
                                    max_grad_norm=self.dp.max_grad_norm,
                                    expected_batch_size=min(s.batch_size, n), generator=self._dp_gen,
                                    clipping=self.dp.clipping, group=group)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=model.device)
        seen = 0
        phys = s.physical_batch_size
        batches = self._batches(n, steps) if self.is_main else None
        if group is not None:  # every rank steps on rank 0's draw (the one-process batches)
            batches = group.broadcast_batches(batches, steps)
        assert batches is not None
        try:
            for idx in batches:
                own = shard.owned(idx)  # this rank's members of the global batch (all of it in one process)
                if dp is not None and len(own) == 0:
                    dp.empty_batch()
                    dp.step(prox)
                    seen += len(idx)
                    continue
                # one logical batch as memory-bounded physical micro-batches, one optimizer step
                parts = shard.micro_batches(own, phys)
                for j, part in enumerate(parts):
                    feats, batch = shard.batch(part)
                    if dp is None:
                        losses = model.caption_nll(batch, net(feats.to(params[0].device, params[0].dtype)))
                        (losses.sum() / len(idx)).backward()
                    else:
                        losses = dp.backward(feats, lambda z, b=batch: model.caption_nll(b, z))
                        if j < len(parts) - 1:
                            dp.accumulate()
                    loss_sum += losses.detach().sum()
                if dp is None:
                    if group is not None:  # sum of per-rank sums / global batch = the one-process gradient
                        for p in params:
                            if p.grad is None:  # another rank holds every member of this batch
                                p.grad = torch.zeros_like(p)
                        group.all_reduce_sum_([p.grad for p in params])
                    if prox is not None:
                        prox()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                else:
                    dp.step(prox)
                seen += len(idx)
        finally:
            if dp is not None:
                dp.close()
        if group is not None:
            group.all_reduce_sum_([loss_sum], what="the training loss")
        elapsed = time.perf_counter() - t0
        if basis:
            model.load_projector_state(net.state())  # type: ignore[operator]
        final = model.projector_state()
        delta = {k: final[k] - anchor[k] for k in final}
        metrics = {"train_loss": float(loss_sum) / max(seen, 1), "steps": float(steps),
                   "examples_processed": float(seen), "seconds": elapsed,
                   "examples_per_second": seen / elapsed if elapsed > 0 else 0.0,
                   "trained_params": float(sum(p.numel() for p in params))}
        if dp is not None:
            metrics["noise_multiplier"] = charge.noise_multiplier  # type: ignore[union-attr]
            metrics.update(dp.gradient_norms())  # local: the operator's clip hint (privacy.clip_hint)
        eps = None
        if admitted is not None:
            assert self.accountant is not None
            eps = self.accountant.commit(admitted)  # committed before the update is handed out
        return RoundResult(delta, n, metrics, eps, charge)

    @staticmethod
    def _prox(named, anchor, mu: float) -> Callable[[], None]:
        def add() -> None:  # FedProx: ∇ μ/2 ||θ − θ_t||², data-independent (safe after DP noise)
            with torch.no_grad():
                for name, p in named:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad.add_(p.detach() - anchor[name], alpha=mu)

        return add


def train_rounds(trainer: LocalTrainer, params: Params, shards: Callable[[], ShardData | None], *,
                 rounds: int, on_round: Callable[[int, RoundResult, Params], None] | None = None
                 ) -> tuple[Params, list[RoundResult]]:
    """Centralized / local-only training: rounds of ``train_round`` applied as θ ← θ + Δ.

    ``shards()`` returns the next fresh shard (None when the data is spent).
    """
    results = []
    for r in range(rounds):
        shard = shards()
        if shard is None:
            break
        res = trainer.train_round(params, shard)
        params = {k: params[k] + res.delta[k].to(params[k].device) for k in params}
        results.append(res)
        if on_round is not None:
            on_round(r, res, params)
    return params, results
