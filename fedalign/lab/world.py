"""The embedded world's scenarios as a FederatedProblem, through the silo trainer and evaluator.

One process builds (or loads from cache) the world's frozen models, draws the scenario's
silos, cuts every silo's data into R disjoint shards (one pass: round t trains on shard t)
and runs the frozen tower once per shard; strategies then share those prepared shards, so a
results worker runs many strategies on the same data at the cost of training alone.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from fedalign.protocol.errors import ConfigError
from fedalign.fedcmp.strategy import Tensors
from fedalign.lab.problem import LocalResult

from fedalign.protocol.config.silo import DP_TRAIN_DEFAULTS

__all__ = ["WorldFederation", "build_world_problem", "SCENARIO_NAMES", "SCENARIO_KEYS", "DEFAULTS", "DP_DEFAULTS"]

SCENARIO_NAMES = {"label": "label_skew", "domain": "domain_skew", "style": "style_skew", "unreliable": "unreliable"}

# Sizes of the default experiment (every one overridable through ProblemOptions.extra).
DEFAULTS: dict[str, Any] = {
    "samples_per_round": 64,  # per silo per round (unreliable: the mean; sizes vary)
    "test_size": 300,
    "batch_size": 16,
    "lr": 2e-3,
    "optimizer": "adamw",
    "local_epochs": 1.0,
    "physical_batch_size": None,  # micro-batch bound for large (DP) logical batches
    "subspace_rank": None,  # r: silos train W_t + U·C in a public basis U (silo.subspace)
    # where U comes from: "cumulative" (top-r of θ_t − θ_0; full rank at round 0) or "public" (top-r of
    # the loss gradient at θ_t on the coordinator's public set, GEP-style; no privacy cost)
    "subspace_basis": "cumulative",
    # what a round trains on: "shards" (round t on the silo's t-th disjoint shard; ε is one pass of
    # (σ, q = B/shard, T)) or "pooled" (every round Poisson-samples the silo's whole data, q = B/all;
    # ε composes R rounds of (σ, q, T), and the smaller q buys a smaller σ at the same budget). Steps
    # per round are the same in both: local_epochs passes over a round's worth (samples_per_round).
    "sampling": "shards",
    # E > 0: θ_0 is the fresh projector trained E passes over the coordinator's public set (no DP: public
    # data; batch_size/lr of these defaults), the same start for every strategy
    "public_warm_start": 0,
    "eval_batch": 64,
    "world": "default",  # "default" or "tiny" (tests)
    "device": "cpu",  # "cpu", "cuda" or "auto": frozen models in bf16 on CUDA, projector float32
    # the coordinator's small clean public set (reliability "reference"): disjoint draws from the pooled
    # clean distribution, used only by the coordinator's own reference update
    "public_size": 300,
    "public_per_round": None,  # samples per reference update (None: samples_per_round, a silo's shard)
    "reference_kind": "update",  # "update" (clean update) | "contrast" (clean minus shuffled-caption update)
}


# Under DP, the schedule a run takes when it names none: the recipe measured in results/notes/dp_notes.md
# and the "dp" experiment family (large Poisson batches, several passes over a larger shard: the noise on the
# mean gradient, σ·√d/B, falls with B). The non-DP defaults above (batch 16 of 64) put σ·√d/B near
# 40 clip norms and ended above the no-image NLL (issue 27: 1.106 against 1.026, domain, seed 11).
DP_DEFAULTS: dict[str, Any] = {
    **DP_TRAIN_DEFAULTS,  # batch 256 as micro-batches of 128, lr 3e-3: a silo.toml's DP schedule
    "samples_per_round": 1024,
    "local_epochs": 8.0,  # the DP table's 8 passes over a round's 1,024 (a silo's shard of 512 takes 4)
}


def _split(items: list, parts: int) -> list[list]:
    """``parts`` contiguous, near-equal, disjoint chunks (one pass over ``items``)."""
    n = len(items)
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


class WorldFederation:
    """A :class:`simulation.problem.FederatedProblem` over one scenario of the embedded world."""

    def __init__(self, scenario: str, opts) -> None:
        from fedalign.silo.sources import world_records
        from fedalign.silo.model import load_alignment_model
        from fedalign.silo.privacy import DPSettings
        from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard
        from fedalign.world.build import build_world
        from fedalign.world.scenarios import make_scenario
        from fedalign.world.spec import TINY_SPEC, WorldSpec

        cfg = {**DEFAULTS, **(DP_DEFAULTS if opts.dp else {}), **(opts.extra or {})}
        if opts.samples_per_round is not None:
            cfg["samples_per_round"] = opts.samples_per_round
        self.cfg, self.seed, self.rounds = cfg, opts.seed, opts.rounds
        spec = TINY_SPEC if cfg["world"] == "tiny" else WorldSpec()
        art = build_world(spec)
        self.world_id = art.vision_path.parent.name  # world-<hash of spec and code>
        self.model = load_alignment_model(
            str(art.vision_path), str(art.lm_path), projector="mlp2x_gelu", device=cfg["device"],
            generator=torch.Generator().manual_seed(opts.seed),
        )
        self._init = _on_cpu(self.model.projector_state())
        kw: dict[str, Any] = {}
        if opts.alpha is not None:
            kw["alpha"] = opts.alpha
        if opts.n_unreliable is not None:
            kw["n_unreliable"] = opts.n_unreliable
        if opts.corruption is not None:
            kw["corrupt_fraction"] = opts.corruption
        kw.update({k: v for k, v in cfg.items() if k in SCENARIO_KEYS})
        sc = make_scenario(
            SCENARIO_NAMES[scenario], n_silos=opts.n_silos, seed=opts.seed,
            samples_per_silo=cfg["samples_per_round"] * opts.rounds, test_size=cfg["test_size"], **kw,
        )
        self.scenario = sc
        self.n_silos = len(sc.silos)
        self.unreliable = tuple(sc.unreliable)

        def records(samples):
            return world_records(samples, f"{scenario}/silo")

        chunks = [[records(chunk) for chunk in _split(silo, opts.rounds)] for silo in sc.silos]
        self.shards = [[prepare_shard(self.model, c, shard_index=t) for t, c in enumerate(row)] for row in chunks]
        self._chunks = chunks
        self._pooled: dict[int, Any] = {}
        self._whole: dict[int, Any] = {}  # silo -> all its records as one shard ("pooled" sampling)
        self._prepare_shard = prepare_shard
        from fedalign.silo.evaluate import prepare_eval
        from fedalign.world.probes import make_eval_items
        from fedalign.world.text import text_only_prompt

        self.rare, self._rare_rows = _rare_split(sc)
        items = make_eval_items(list(sc.test), seed=opts.seed, kinds=_EVAL_KINDS)
        self.eval_set = prepare_eval(self.model, records(sc.test), items, text_only_prompt=text_only_prompt)
        self._pooled_sampling()  # refuses an unknown mode before any training
        settings = TrainSettings(batch_size=cfg["batch_size"], lr=cfg["lr"], optimizer=cfg["optimizer"],
                                 local_epochs=cfg["local_epochs"], physical_batch_size=cfg["physical_batch_size"])
        self._dp = None
        if opts.dp:  # noise_multiplier None: σ derived from (ε, δ) for the planned schedule
            self._dp = DPSettings(noise_multiplier=opts.dp.get("noise_multiplier"),
                                  max_grad_norm=opts.dp["max_grad_norm"])
        self.dp_plan = None  # the DP plan of the silos' schedule (set by the first trainer)
        self._settings = settings
        self._trainers: dict[tuple[int, float], Any] = {}
        self._dp_budget = opts.dp
        self._LocalTrainer = LocalTrainer
        self._records = records
        self._public: list | None = None  # the coordinator's public shards, built on first use
        self._reference_calls = 0

    # -- FederatedProblem ----------------------------------------------------------------
    def init_params(self) -> Tensors:
        """θ_0: the fresh projector, or (``public_warm_start`` = E > 0) that projector after E passes
        over the coordinator's public set (no DP: public data), the same for every strategy."""
        epochs = float(self.cfg.get("public_warm_start") or 0)
        if epochs <= 0:
            return {k: v.clone() for k, v in self._init.items()}
        if getattr(self, "_warm_key", None) != epochs:
            from fedalign.silo.trainer import TrainSettings

            settings = TrainSettings(batch_size=DEFAULTS["batch_size"], lr=DEFAULTS["lr"], optimizer="adamw",
                                     local_epochs=epochs)
            tr = self._LocalTrainer(self.model, settings, dp=None, accountant=None,
                                    generator=torch.Generator().manual_seed(self.seed * 31 + 5))
            delta = tr.train_round(self._init, self._public_all()).delta
            self._warm_key, self._warm = epochs, {k: self._init[k] + delta[k].cpu() for k in self._init}
        return {k: v.clone() for k, v in self._warm.items()}

    def _trainer(self, silo: int, lr: float | None = None):
        key = (silo, lr)
        if key not in self._trainers:
            gen = torch.Generator().manual_seed(self.seed * 7919 + silo)
            settings = replace(self._settings, **({"lr": lr} if lr is not None else {}))
            dp = None if silo == REFERENCE else self._dp  # the coordinator's public set needs no DP
            if silo >= 0 and self._pooled_sampling():  # a round's worth of steps on the whole data
                per_round = math.ceil(sum(len(sh) for sh in self.shards[silo]) / self.rounds)
                settings = replace(settings, local_steps=settings.steps_for(per_round))
                if dp is not None:  # every round is a pass over the whole data: R of them compose
                    dp = replace(dp, passes=self.rounds)
            accountant = None
            if dp is not None:
                from fedalign.silo.privacy import PrivacyAccountant

                accountant = PrivacyAccountant(epsilon=self._dp_budget["epsilon"], delta=self._dp_budget["delta"])
            tr = self._LocalTrainer(self.model, settings, dp=dp, accountant=accountant, generator=gen)
            if dp is not None:  # one σ for every shard this trainer may see (refused if impossible)
                if silo >= 0:
                    shards = [self._silo_data(silo)] if self._pooled_sampling() else self.shards[silo]
                else:
                    shards = list(self._pooled.values())
                sizes = [len(sh) for sh in shards] or [1]  # this silo's own schedule: its own budget
                plan = tr.plan_dp(sizes)
                if silo >= 0 and self.dp_plan is None:
                    r = self.cfg.get("subspace_rank")
                    if r:  # the noise lives in the coefficients C, not in every projector weight (a round
                        # without a basis yet, round 0 of the cumulative one, trains and noises all of them)
                        from fedalign.silo.subspace import subspace_numel

                        plan = replace(plan, n_params=subspace_numel(self.model.projector, int(r)))
                    self.dp_plan = plan
                    print(plan.describe(), flush=True)
            self._trainers[key] = tr
        return self._trainers[key]

    def configure(self, *, dp: dict | None | bool = False, **train) -> None:
        """Change the silos' training settings (TrainSettings fields) and/or DP options
        (``dict(noise_multiplier=None|σ, max_grad_norm, epsilon, delta)``, or None for no DP) between
        runs on the same prepared shards; fresh trainers and accountants follow."""
        from fedalign.silo.privacy import DPSettings

        for k in ("subspace_rank", "subspace_basis", "sampling", "public_warm_start"):
            if k in train:
                self.cfg[k] = train.pop(k)
        if train:
            self._settings = replace(self._settings, **train)
        if dp is not False:
            self._dp_budget = dp
            self._dp = None if not dp else DPSettings(noise_multiplier=dp.get("noise_multiplier"),
                                                      max_grad_norm=dp["max_grad_norm"])
        self.dp_plan = None
        self.reset()

    def no_image(self) -> dict[str, float]:
        """The frozen LM with no image on the same held-out set: the level to beat."""
        from fedalign.silo.evaluate import no_image_metrics

        m = no_image_metrics(self.model, self.eval_set, batch_size=self.cfg["eval_batch"])
        return {"nll_no_image": m["heldout_nll_no_image"], "mc_accuracy_no_image": m.get("mc_accuracy_no_image")}

    def _pooled_sampling(self) -> bool:
        mode = self.cfg.get("sampling", "shards")
        if mode not in ("shards", "pooled"):
            raise ConfigError(f"sampling: expected shards or pooled, got {mode!r}")
        return mode == "pooled"

    def _silo_data(self, silo: int):
        """All of ``silo``'s records as one prepared shard (built on first use)."""
        if silo not in self._whole:
            self._whole[silo] = self._prepare_shard(self.model, [r for c in self._chunks[silo] for r in c])
        return self._whole[silo]

    def local_update(self, params: Tensors, silo: int, round: int, prox_mu: float) -> LocalResult:
        if self._pooled_sampling():  # round t: pass t over the silo's whole data
            shard = replace(self._silo_data(silo), pass_index=round)
        else:
            shard = self.shards[silo][round % self.rounds]
        trainer = self._trainer(silo)
        # same batch order for every strategy: reseed the silo's generator per (silo, round)
        trainer.generator.manual_seed(self.seed * 1_000_003 + silo * 1009 + round)
        res = trainer.train_round(params, shard, basis=self._basis(params), prox_mu=prox_mu)
        return LocalResult(_on_cpu(res.delta), res.n_samples, res.metrics.get("train_loss", math.nan))

    def _basis(self, params: Tensors):
        """The shared public basis for subspace training (None: full-rank), the same at every silo."""
        r = self.cfg.get("subspace_rank")
        if not r:
            return None
        from fedalign.silo.subspace import public_basis

        source = self.cfg.get("subspace_basis", "cumulative")
        key = (source, int(r), *(float(v.double().sum()) for v in params.values()))
        if getattr(self, "_basis_key", None) != key:
            if source == "public":
                g = self._public_gradient(params)
                val = public_basis(g, {k: torch.zeros_like(v) for k, v in g.items()}, int(r))
            elif source == "cumulative":
                val = public_basis(params, self._init, int(r))
            else:
                raise ConfigError(f"subspace_basis: expected cumulative or public, got {source!r}")
            self._basis_key, self._basis_val = key, val
        return self._basis_val or None

    def _public_gradient(self, params: Tensors) -> Tensors:
        """−(mean loss gradient) at θ_t on the coordinator's whole public set: one full-batch SGD step
        of lr 1 (no DP: public data), the same at every silo for the same θ_t."""
        from fedalign.silo.trainer import TrainSettings

        pooled = self._public_all()
        settings = TrainSettings(batch_size=len(pooled), lr=1.0, optimizer="sgd", local_steps=1,
                                 physical_batch_size=self._settings.physical_batch_size)
        tr = self._LocalTrainer(self.model, settings, dp=None, accountant=None,
                                generator=torch.Generator().manual_seed(0))
        return _on_cpu(tr.train_round(params, pooled).delta)

    def _public_all(self):
        """The coordinator's whole public set as one prepared shard."""
        shards = self._public_shards()
        if len(shards) == 1:
            return shards[0][1]
        if getattr(self, "_public_pooled", None) is None:
            self._public_pooled = self._prepare_shard(self.model, [r for sh in shards for r in sh[0]], shard_index=0)
        return self._public_pooled

    def centralized_update(self, params: Tensors, round: int, lr: float | None = None) -> Tensors:
        """One pass over every silo's round-``round`` shard pooled and shuffled (the centralized
        reference), at the silos' learning rate or ``lr``."""
        if round not in self._pooled:
            pooled = [r for row in self._chunks for r in row[round % self.rounds]]
            self._pooled[round] = self._prepare_shard(self.model, pooled, shard_index=round)
        trainer = self._trainer(-1, lr)
        trainer.generator.manual_seed(self.seed * 1_000_003 + round)
        return _on_cpu(trainer.train_round(params, self._pooled[round]).delta)

    def reset(self) -> None:
        """Fresh trainers and accountants: each simulation on this problem is its own federation."""
        self._trainers.clear()
        self._reference_calls = 0

    def _public_shards(self) -> list:
        """The coordinator's public set (``public_size`` clean samples, its own random stream, so
        disjoint draws from every silo's and the test split's), cut into shards of
        ``public_per_round`` that the reference cycles through: [records, prepared shard, shuffled
        copy or None]."""
        if self._public is None:
            import numpy as np

            from fedalign.world.scenarios import make_samples

            cfg = self.cfg
            size = int(cfg["public_size"])
            per = int(cfg["public_per_round"] or cfg["samples_per_round"])
            if size < 1 or per < 1:
                raise ConfigError(f"public_size and public_per_round must be ≥ 1, got {size} and {per}")
            samples = make_samples(size, np.random.default_rng([self.seed, 997]),
                                   counts=tuple(self.scenario.params.get("counts", (1, 2, 3))))
            recs = self._records(samples)
            n_shards = max(1, size // per)
            self._public = [[chunk, self._prepare_shard(self.model, chunk, shard_index=i), None]
                            for i, chunk in enumerate(_split(recs, n_shards))]
        return self._public

    def _shuffled(self, i: int):
        """Public shard ``i`` with its captions shuffled among its images (built on first use)."""
        entry = self._public_shards()[i]
        if entry[2] is None:
            import numpy as np

            chunk = entry[0]
            perm = np.random.default_rng([self.seed, 996, i]).permutation(len(chunk))
            swapped = [replace(r, caption=chunk[int(j)].caption) for r, j in zip(chunk, perm)]
            entry[2] = self._prepare_shard(self.model, swapped, shard_index=i)
        return entry[2]

    def reference_update(self, params: Tensors) -> Tensors:
        """The coordinator's reference for Fed-CMP reliability "reference": its own update from θ_t on
        the next shard of its public set, with the silos' trainer settings (FLTrust's server update).
        ``reference_kind`` "contrast": that update minus the update on the same images with shuffled
        captions, i.e. what the true image-caption pairing teaches beyond caption language."""
        from fedalign.protocol.reference import reference_seed

        kind = self.cfg["reference_kind"]
        if kind not in ("update", "contrast"):
            raise ConfigError(f"reference_kind: expected update or contrast, got {kind!r}")
        shards = self._public_shards()
        t = self._reference_calls
        self._reference_calls += 1
        i = t % len(shards)
        trainer = self._trainer(REFERENCE)
        trainer.generator.manual_seed(reference_seed(self.seed, t))
        delta = trainer.train_round(params, shards[i][1]).delta
        if kind == "contrast":
            trainer.generator.manual_seed(reference_seed(self.seed, t))
            other = trainer.train_round(params, self._shuffled(i)).delta
            delta = {k: delta[k] - other[k] for k in delta}
        return delta

    def evaluate(self, params: Tensors) -> dict[str, float]:
        self.model.load_projector_state(params)
        return _evaluate(self, params)


REFERENCE = -2  # the trainer key of the coordinator's reference update (public data: never DP)


def _on_cpu(params: Tensors) -> Tensors:
    """The round loop and the secure sums work on host tensors, wherever the silo trained."""
    return {k: v.detach().cpu() for k, v in params.items()}


SCENARIO_KEYS = ("skew_attribute", "purity", "quantity_alpha", "min_samples", "unreliable_largest", "domain_purity",
                  "counts")
_EVAL_KINDS = ("caption_mc", "presence")

# silo.evaluate's names -> the simulator's
_RENAME = {"heldout_nll": "nll"}


def _evaluate(fed: WorldFederation, params: Tensors) -> dict[str, float]:
    """Held-out caption NLL, multiple-choice caption accuracy and presence probe (silo.evaluate)."""
    from fedalign.silo.evaluate import caption_nlls, evaluate

    m = evaluate(fed.model, fed.eval_set, batch_size=fed.cfg["eval_batch"], text_only_baseline=False)
    out = {_RENAME.get(k, k): v for k, v in m.items() if not k.startswith("n_")}
    rows = fed._rare_rows
    if rows is not None and 0 < int(rows.sum()) < len(rows):  # where the federation's data is thin
        nll = caption_nlls(fed.model, fed.eval_set, batch_size=fed.cfg["eval_batch"])
        out["nll_rare"], out["nll_common"] = float(nll[rows].mean()), float(nll[~rows].mean())
    return out


RARE_SHARE = 0.01  # a label value under this share of the silos' training objects counts as rare


def _rare_split(sc) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """label_skew: the skewed attribute's values under RARE_SHARE of all silos' training objects, and
    which held-out samples show one (None elsewhere, or when no value is rare)."""
    if sc.name != "label_skew":
        return (), None
    attr = sc.params.get("skew_attribute", "shape")
    counts: dict[str, int] = {}
    for silo in sc.silos:
        for s in silo:
            for o in s.scene.objects:
                counts[getattr(o, attr)] = counts.get(getattr(o, attr), 0) + 1
    total = sum(counts.values())
    test_values = {getattr(o, attr) for s in sc.test for o in s.scene.objects}
    rare = tuple(sorted(v for v in test_values if counts.get(v, 0) < RARE_SHARE * total))
    if not rare:
        return (), None
    return rare, torch.tensor([any(getattr(o, attr) in rare for o in s.scene.objects) for s in sc.test])


def build_world_problem(scenario: str, opts) -> WorldFederation:
    if scenario not in SCENARIO_NAMES:
        raise ConfigError(f"--scenario: expected one of {sorted(SCENARIO_NAMES)}, got {scenario!r}")
    return WorldFederation(scenario, opts)
