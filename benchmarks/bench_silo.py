"""Silo training speed: LocalTrainer against a bare PyTorch loop, and a DP step against a plain one.

Same frozen models (the embedded world's by default, or tiny random ones with ``--tiny``), same
batch size, same number of optimizer steps. The bare loop is what one would write by hand:
projector, scatter into the LM's input embeddings, HF forward, token-mean cross-entropy,
AdamW. Both use cached tower features; a third figure shows what the cache saves against
running the tower every step. Repeats are interleaved and the best (least disturbed) is reported, with median/best
as a noise gauge. The DP ratio compares step loops (the round's setup and accounting excluded). Ends with
one JSON line of the figures.

    python benchmarks/bench_silo.py [--steps 30] [--batch 32] [--repeats 5] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from fedalign.host.process import apply_process_defaults

apply_process_defaults()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fedalign.silo.data import Sample  # noqa: E402
from fedalign.silo.model import AlignmentModel, build_projector, load_alignment_model  # noqa: E402
from fedalign.silo.privacy import DPSettings, PrivacyAccountant  # noqa: E402
from fedalign.silo.trainer import LocalTrainer, ShardData, TrainSettings, prepare_shard  # noqa: E402


def _world_model(tiny: bool, world_dir: str | None) -> tuple[AlignmentModel, list[Sample]]:
    from fedalign.world import CAPTION_PROMPT, TINY_SPEC, WorldSpec, build_world, make_scenario

    if world_dir:  # an already built world folder (holding vision/ and lm/)
        vision, lm = f"{world_dir}/vision", f"{world_dir}/lm"
    else:
        art = build_world(TINY_SPEC if tiny else WorldSpec())
        vision, lm = str(art.vision_path), str(art.lm_path)
    model = load_alignment_model(vision, lm, device="auto", generator=torch.Generator().manual_seed(0))
    sc = make_scenario("iid", 1, 0, samples_per_silo=512, test_size=1, n_unreliable=0, min_samples=1)
    return model, [Sample(s.image, CAPTION_PROMPT, s.caption) for s in sc.silos[0]]


def _bare_loop(model: AlignmentModel, shard: ShardData, images, batches, *, with_tower: bool) -> float:
    """Seconds for the hand-written loop over ``batches`` (index tensors)."""
    proj = build_projector(model.projector_kind, model.vision.hidden_size, model.d_model,
                           generator=torch.Generator().manual_seed(1)).to(model.device)
    opt = torch.optim.AdamW(proj.parameters(), lr=1e-3)
    embed = model.llm.get_input_embeddings()
    t = shard.tokens
    _sync(model)
    t0 = time.perf_counter()
    for idx in batches:
        L = int(shard.lengths[idx].max())
        ids, attn = t.input_ids[idx, :L], t.attention_mask[idx, :L]
        img, tgt = t.image_mask[idx, :L], t.target_mask[idx, :L]
        if with_tower:
            feats = model.vision(model.vision.preprocess([images[i] for i in idx.tolist()]))
        else:
            feats = shard.features[idx]
        x = embed(ids)
        x = x.masked_scatter(img.unsqueeze(-1), proj(feats.float()).to(x.dtype))
        logits = model.llm(inputs_embeds=x, attention_mask=attn.long()).logits[:, :-1].float()
        labels = ids[:, 1:].masked_fill(~tgt[:, 1:], -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(model)
    return time.perf_counter() - t0


def _sync(model: AlignmentModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def _silo(model: AlignmentModel, shard: ShardData, steps: int, batch: int, dp: str | None) -> tuple[float, float]:
    """(seconds for the whole round, seconds in its step loop) of ``LocalTrainer.train_round``."""
    settings = TrainSettings(batch_size=batch, lr=1e-3, local_steps=steps)
    params = {k: v.clone() for k, v in build_projector(
        model.projector_kind, model.vision.hidden_size, model.d_model,
        generator=torch.Generator().manual_seed(1)).state_dict().items()}
    if dp is None:
        tr = LocalTrainer(model, settings, generator=torch.Generator().manual_seed(0))
    else:
        tr = LocalTrainer(model, settings, dp=DPSettings(1.0, 1.0, dp),
                          accountant=PrivacyAccountant(1e9, 1e-5), generator=torch.Generator().manual_seed(0))
    _sync(model)
    t0 = time.perf_counter()
    res = tr.train_round(params, shard)
    _sync(model)
    return time.perf_counter() - t0, res.metrics["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="the tiny world (seconds to build)")
    ap.add_argument("--world-dir", help="use this built world folder instead of building one")
    a = ap.parse_args()

    model, samples = _world_model(a.tiny, a.world_dir)
    shard = prepare_shard(model, samples)
    images = [s.image for s in samples]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randperm(len(shard), generator=g)[: a.batch] for _ in range(a.steps)]
    runs: dict[str, list[float]] = {k: [] for k in ("bare", "bare_tower", "silo", "silo_loop", "dp_ghost_loop",
                                                    "dp_per_sample_loop")}
    _bare_loop(model, shard, images, batches[:3], with_tower=False)  # warm-up
    _silo(model, shard, 3, a.batch, None)
    _silo(model, shard, 3, a.batch, "ghost")
    for _ in range(a.repeats):
        runs["bare"].append(_bare_loop(model, shard, images, batches, with_tower=False))
        runs["bare_tower"].append(_bare_loop(model, shard, images, batches, with_tower=True))
        total, loop = _silo(model, shard, a.steps, a.batch, None)
        runs["silo"].append(total)
        runs["silo_loop"].append(loop)
        runs["dp_ghost_loop"].append(_silo(model, shard, a.steps, a.batch, "ghost")[1])
        runs["dp_per_sample_loop"].append(_silo(model, shard, a.steps, a.batch, "per_sample")[1])
    # best of the interleaved repeats: the run least disturbed by other processes on the machine
    med = {k: min(v) for k, v in runs.items()}
    spread = {k: statistics.median(v) / min(v) for k, v in runs.items()}
    ex = a.steps * a.batch
    fig = {
        "benchmark": "silo",
        "device": str(model.device),
        "model": a.world_dir or ("tiny world" if a.tiny else "embedded world"),
        "steps": a.steps, "batch": a.batch, "repeats": a.repeats,
        "bare_examples_per_s": ex / med["bare"],
        "silo_examples_per_s": ex / med["silo"],
        "throughput_vs_bare": med["bare"] / med["silo"],
        "dp_ghost_step_vs_plain": med["dp_ghost_loop"] / med["silo_loop"],
        "dp_per_sample_step_vs_plain": med["dp_per_sample_loop"] / med["silo_loop"],
        "feature_cache_speedup": med["bare_tower"] / med["bare"],
        "goal_throughput_vs_bare": 0.9, "goal_dp_step_vs_plain": 1.5,
        "timing": "best of repeats", "median_over_best": spread,
    }
    print(f"silo {fig['silo_examples_per_s']:.0f} ex/s vs bare loop {fig['bare_examples_per_s']:.0f} ex/s: "
          f"{fig['throughput_vs_bare']:.2f}x (goal >= 0.9)")
    print(f"DP step vs plain: ghost {fig['dp_ghost_step_vs_plain']:.2f}x, per-sample "
          f"{fig['dp_per_sample_step_vs_plain']:.2f}x (goal <= 1.5)")
    print(f"cached tower features vs tower every step: {fig['feature_cache_speedup']:.2f}x faster")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
