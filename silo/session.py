"""One silo assembled from silo.toml: data, one-pass cursor, model, trainer, budget, evaluation.

The networked runtime and the local CLI both build a :class:`SiloSession` and call
``train_round(global_params)`` once per round; ``run_local`` is the aggregator-free loop
(centralized or local-only reference). Order of checks: data, privacy feasibility, models,
so a bad input fails before anything is trained or written.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any, Callable

import torch

from common.config.silo import SiloConfig
from common.errors import DataError
from common.ledger import Ledger
from silo.data import ShardCursor, fingerprint
from silo.evaluate import EvalSet, evaluate, no_image_metrics, prepare_eval
from silo.model import AlignmentModel, build_projector, load_alignment_model
from silo.privacy import DPPlan, PrivacyAccountant, plan_dp
from silo.sources import SiloInputs, load_inputs, model_paths
from silo.trainer import DPSettings, LocalTrainer, Params, RoundResult, TrainSettings, prepare_shard

__all__ = ["SiloSession", "run_local"]


class SiloSession:
    """Everything one silo needs for a run; all state files live in ``cfg.state_dir``."""

    def __init__(self, cfg: SiloConfig, *, inputs: SiloInputs | None = None, model: AlignmentModel | None = None,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self.inputs = inputs if inputs is not None else load_inputs(cfg)
        t, p = cfg.train, cfg.privacy
        self.settings = TrainSettings(t.batch_size, t.lr, t.optimizer, t.weight_decay, t.local_steps,
                                      t.local_epochs, t.prox_mu, t.physical_batch_size)
        state = cfg.state_dir
        self.ledger = Ledger(state / "ledger.jsonl")
        self.accountant: PrivacyAccountant | None = None
        self.dp: DPSettings | None = None
        if p.enabled:
            self.dp = DPSettings(p.noise_multiplier, p.max_grad_norm, p.clipping,
                                 t.seed if p.insecure_seeded_noise else None, passes=cfg.data.max_passes)
            self.accountant = PrivacyAccountant(p.epsilon, p.delta, accountant=p.accountant,
                                                state_path=state / "privacy.json", ledger=self.ledger)
            n = min(cfg.data.shard_size, len(self.inputs.train))
            # σ from the budget (or the override, refused if it cannot meet it), before any model loads
            plan_dp(p.epsilon, p.delta, shard_sizes=[n], batch_size=t.batch_size, steps_for=self.settings.steps_for,
                    max_grad_norm=p.max_grad_norm, passes=cfg.data.max_passes, noise_multiplier=p.noise_multiplier,
                    accountant=p.accountant)
        if model is None:
            vision, llm = model_paths(cfg)
            m = cfg.model
            model = load_alignment_model(vision, llm, projector=m.projector, select_layer=m.select_layer,
                                         select_feature=m.select_feature, gguf_file=m.gguf_file,
                                         device=m.device, max_caption_tokens=m.max_caption_tokens)
        self.model = model
        self.trainer = LocalTrainer(model, self.settings, dp=self.dp, accountant=self.accountant,
                                    generator=torch.Generator().manual_seed(t.seed))
        self.dp_plan: DPPlan | None = None
        if self.dp is not None:
            self.dp_plan = self.trainer.plan_dp([min(cfg.data.shard_size, len(self.inputs.train))])
            assert self.dp_plan is not None
            print(f"[{cfg.federation.silo_id or 'silo'}] {self.dp_plan.describe()}", file=sys.stderr, flush=True)
            self.ledger.append("dp_plan", asdict(self.dp_plan), now=clock())
        self._cursor: ShardCursor | None = None
        self._eval: EvalSet | None = None
        self._no_image: dict[str, float] | None = None

    # -- parameters and data ------------------------------------------------------------------
    def initial_params(self) -> Params:
        """A fresh projector from ``train.seed`` (the aggregator's round-0 θ in federated runs)."""
        m = self.model
        p = build_projector(m.projector_kind, m.vision.hidden_size, m.d_model,
                            generator=torch.Generator().manual_seed(self.cfg.train.seed))
        return {k: v.detach().to(m.device) for k, v in p.state_dict().items()}

    @property
    def cursor(self) -> ShardCursor:
        if self._cursor is None:
            self._cursor = ShardCursor(self.cfg.state_dir / "cursor.json", len(self.inputs.train),
                                       fingerprint(self.inputs.train), seed=self.cfg.train.seed,
                                       max_passes=self.cfg.data.max_passes)
        return self._cursor

    @property
    def samples_seen(self) -> int:
        return self.cursor.samples_used

    def train_round(self, global_params: Params) -> RoundResult:
        """Draw the next fresh shard (persisted first), train on it, return Δ (DP charged)."""
        shard = self.cursor.next_shard(self.cfg.data.shard_size)
        data = prepare_shard(self.model, [self.inputs.train[i] for i in shard.indices],
                             pass_index=shard.pass_index, shard_index=shard.shard_index)
        return self.trainer.train_round(global_params, data)

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, params: Params) -> dict[str, float]:
        if self._eval is None:
            self._eval = prepare_eval(self.model, self.inputs.heldout, self.inputs.items,
                                      text_only_prompt=self.inputs.text_only_prompt,
                                      batch_size=self.cfg.eval.batch_size)
        self.model.load_projector_state(params)
        m = evaluate(self.model, self._eval, batch_size=self.cfg.eval.batch_size,
                     length_normalize=self.cfg.eval.length_normalize)
        if self._no_image is None:  # the same LM without the image: independent of the projector
            self._no_image = no_image_metrics(self.model, self._eval, batch_size=self.cfg.eval.batch_size,
                                              length_normalize=self.cfg.eval.length_normalize)
        return {**m, **self._no_image}

    @property
    def epsilon_spent(self) -> float | None:
        return self.accountant.spent if self.accountant is not None else None


def run_local(session: SiloSession, *, on_round: Callable[[int, RoundResult], None] | None = None
              ) -> tuple[Params, dict[str, Any]]:
    """Train ``train.rounds`` shards without an aggregator (θ ← θ + Δ each round), then evaluate.

    Stops early, cleanly, when the one-pass data is spent after at least one round.
    """
    cfg = session.cfg
    params = session.initial_params()
    rounds: list[dict[str, Any]] = []
    stopped = "rounds"
    for r in range(cfg.train.rounds):
        try:
            res = session.train_round(params)
        except DataError as exc:
            if r == 0 or "spent" not in str(exc):
                raise
            stopped = "data_spent"
            break
        params = {k: params[k] + res.delta[k] for k in params}
        row = {"round": r, "n_samples": res.n_samples, "epsilon": res.epsilon, **res.metrics}
        rounds.append(row)
        session.ledger.append("round", {"mode": "local", **{k: v for k, v in row.items() if v is not None}},
                              now=session.clock())
        if on_round is not None:
            on_round(r, res)
    metrics = session.evaluate(params)
    summary = {
        **metrics,
        "samples_seen": session.samples_seen,
        "rounds_completed": len(rounds),
        "stopped_by": stopped,
        "epsilon_spent": session.epsilon_spent,
        "delta": cfg.privacy.delta if cfg.privacy.enabled else None,
        "dp": asdict(session.dp) if session.dp else None,
        "data": session.inputs.report,
        "rounds": rounds,
    }
    return params, summary
