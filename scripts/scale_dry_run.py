"""LLaVA-1.5 at real scale, on paper: a dry run on the meta device (no weights, no download).

Builds CLIP ViT-L/14-336 and Vicuna-7B / 13B (v1.5, Llama-2 shapes) from hand-written configs on
``torch.device("meta")``, the projector ``mlp2x_gelu`` for each, and prints:

- per-rank memory of one silo process (every rank of a torchrun silo holds the same: frozen
  tower and LM in bf16, float32 projector with its gradient and AdamW state, activations of
  the LM's backward to its inputs for one micro-batch; an estimate, Korthikanti et al. 2022,
  34·s·h bytes per layer and sample with fused attention);
- the projector payload per silo and round, full and Fed-CMP at several ranks r (exact, from
  ``fedalign.fedcmp.core.matrix_payload_numbers``), as uint32 words on the wire;
- the secure-sum time per round at those payloads, from rates measured in this run with
  ``benchmarks/bench_secagg.py``'s own functions (client masking and aggregator unmask, k
  neighbours) and scaled linearly in the number of summed values (two sums per Fed-CMP round);
- the tokens per second (and bf16 FLOP/s) a silo needs to finish one pass over LLaVA's 558K
  pairs in a day, alone or as one of K equal silos.

Prints a markdown table (docs/scale.md holds a copy) and ends with one JSON line.

    python scripts/scale_dry_run.py [--silos 3] [--micro-batch 8] [--ranks 16,64,256] [--secagg-json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 558_128  # blip_laion_cc_sbu_558k.json
IMAGE_TOKENS = 576  # (336 / 14)^2 patches, CLS dropped (LLaVA's select_feature "patch")
TEXT_TOKENS = 40  # stage-1 prompt + a BLIP caption + EOS, a generous mean
CLIP_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=336, patch_size=14, projection_dim=768)
VICUNA = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
}
GIB = 2**30


def meta_params(build) -> int:
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def models() -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from fedalign.silo.model import build_projector

    tower = meta_params(lambda: CLIPVisionModel(CLIPVisionConfig(**CLIP_L336)))
    out = {}
    for name, cfg in VICUNA.items():
        lm = meta_params(lambda: LlamaForCausalLM(LlamaConfig(**cfg)))
        with torch.device("meta"):
            proj = build_projector("mlp2x_gelu", CLIP_L336["hidden_size"], cfg["hidden_size"])
        shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
        out[name] = {"tower_params": tower, "lm_params": lm, "projector_shapes": shapes,
                     "projector_params": sum(int(torch.Size(s).numel()) for s in shapes.values()),
                     "hidden": cfg["hidden_size"], "layers": cfg["num_hidden_layers"]}
    return out


def memory(m: dict, micro_batch: int) -> dict:
    s = IMAGE_TOKENS + TEXT_TOKENS
    frozen = 2 * (m["tower_params"] + m["lm_params"])
    proj = 16 * m["projector_params"]  # float32 weights + grads + AdamW m and v
    act = 34 * s * m["hidden"] * m["layers"] * micro_batch
    return {"frozen_bf16_gib": frozen / GIB, "projector_fp32_adam_gib": proj / GIB,
            "activations_gib": act / GIB, "total_gib": (frozen + proj + act) / GIB}


def payloads(m: dict, ranks: list[int]) -> dict:
    from fedalign.fedcmp.core import effective_rank, matrix_payload_numbers

    full = m["projector_params"] + 1  # + the silo's weight
    out = {"full": full}
    for r in ranks:
        total = 1
        for shape in m["projector_shapes"].values():
            total += (matrix_payload_numbers(shape[0], shape[1], effective_rank(shape, r), False)
                      if len(shape) == 2 else int(torch.Size(shape).numel()))
        out[f"r{r}"] = total
    return out


def secagg_rates(path: Path | None, k: int) -> dict:
    """Seconds per summed value: client masking (one silo) and aggregator unmask, k neighbours."""
    if path is not None:
        fig = json.loads(path.read_text().strip().splitlines()[-1])
        n = fig["n_params"]
        return {"source": str(path), "mask_s_per_value": fig[f"mask_k{k}_ms"] / 1e3 / n,
                "unmask_s_per_value": fig[f"unmask_k{k}_0drop_ms"] / 1e3 / n, "values_measured": n}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_secagg as B

    shapes = {n: (s[0] // 16, s[1]) for n, s in B.SHAPES.items()}  # 1/16 of LLaVA's projector: 1.3M values
    n = sum(a * b for a, b in shapes.values())
    t0 = time.perf_counter()
    mask, _ = B.client_masking(k, shapes, 1)
    unmask = B.aggregator_unmask(k, shapes, 0)
    return {"source": f"measured now with benchmarks/bench_secagg.py functions ({n:,} values, k={k}, "
                      f"{B.N_SILOS} silos, {time.perf_counter() - t0:.0f}s)",
            "mask_s_per_value": mask / n, "unmask_s_per_value": unmask / n, "values_measured": n}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--silos", type=int, default=3, help="K silos sharing the 558K pairs equally")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--ranks", default="16,64,256")
    ap.add_argument("--k", type=int, default=9, help="SecAgg neighbours whose masks a silo adds")
    ap.add_argument("--secagg-json", type=Path, help="bench_secagg.py's output (its last line) instead of measuring")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation assumed for GPU-days")
    ap.add_argument("--gpu-tflops", type=float, default=989.0, help="bf16 dense peak per GPU (H100 SXM: 989)")
    a = ap.parse_args(argv)
    ranks = [int(r) for r in a.ranks.split(",") if r]
    ms = models()
    rates = secagg_rates(a.secagg_json, a.k)
    seq = IMAGE_TOKENS + TEXT_TOKENS
    tokens_pass = PAIRS * seq
    fig: dict = {"dry_run": "llava-1.5", "pairs": PAIRS, "tokens_per_sample": seq, "silos": a.silos,
                 "micro_batch": a.micro_batch, "secagg": rates, "models": {}}
    lines = [f"LLaVA-1.5 stage 1 on paper: {PAIRS:,} pairs x {seq} tokens ({IMAGE_TOKENS} image + {TEXT_TOKENS} text) "
             f"= {tokens_pass / 1e6:.0f}M tokens per pass; K = {a.silos} equal silos; micro-batch {a.micro_batch}.", "",
             "| | Vicuna-7B | Vicuna-13B |", "|---|---|---|"]
    rows: dict[str, list[str]] = {}

    def add(label: str, values: list[str]) -> None:
        rows.setdefault(label, []).extend(values)

    for name, m in ms.items():
        mem = memory(m, a.micro_batch)
        pay = payloads(m, ranks)
        per_silo_tps = tokens_pass / 86_400 / a.silos
        flops_per_token = 4 * m["lm_params"] + 2 * m["tower_params"] * (IMAGE_TOKENS + 1) / seq
        need_tflops = per_silo_tps * flops_per_token / 1e12
        # masking at each silo runs in parallel, then the aggregator unmasks; Fed-CMP's two sums
        # together carry the payload's values, so the time scales with the payload either way
        sums = {key: n * (rates["mask_s_per_value"] + rates["unmask_s_per_value"]) for key, n in pay.items()}
        fig["models"][name] = {**m, "projector_shapes": {k: list(v) for k, v in m["projector_shapes"].items()},
                               "memory_per_rank": mem, "payload_values": pay,
                               "payload_mib": {k: 4 * v / 2**20 for k, v in pay.items()},
                               "secure_sum_seconds_per_round": sums,
                               "tokens_per_s_per_silo_for_a_pass_a_day": per_silo_tps,
                               "tokens_per_s_alone": tokens_pass / 86_400,
                               "tflops_per_silo": need_tflops,
                               "gpus_per_silo_at_mfu": need_tflops / (a.gpu_tflops * a.mfu)}
        add("tower (CLIP ViT-L/336) parameters", [f"{m['tower_params'] / 1e6:.0f}M"])
        add("LM parameters", [f"{m['lm_params'] / 1e9:.2f}B"])
        add("projector (mlp2x_gelu) parameters", [f"{m['projector_params'] / 1e6:.1f}M"])
        add("per rank: frozen tower + LM, bf16", [f"{mem['frozen_bf16_gib']:.1f} GiB"])
        add("per rank: projector fp32 + grad + AdamW", [f"{mem['projector_fp32_adam_gib']:.2f} GiB"])
        add(f"per rank: LM activations, micro-batch {a.micro_batch} (estimate)", [f"{mem['activations_gib']:.1f} GiB"])
        add("per rank: total", [f"{mem['total_gib']:.1f} GiB"])
        add("cached tower features for 558K pairs (bf16)", [f"{PAIRS * IMAGE_TOKENS * 1024 * 2 / 2**30:.0f} GiB (disk, not GPU)"])
        for key, n in pay.items():
            label = "full update" if key == "full" else f"Fed-CMP r={key[1:]}"
            add(f"payload per silo per round: {label}",
                [f"{4 * n / 2**20:.1f} MiB" + ("" if key == "full" else f" ({pay['full'] / n:.0f}x less)")])
        for key in pay:
            label = "full update" if key == "full" else f"Fed-CMP r={key[1:]}"
            add(f"secure-sum time per round: {label}", [f"{sums[key]:.2f} s"])
        add("tokens/s for one pass a day: one silo alone", [f"{tokens_pass / 86_400:,.0f}"])
        add(f"tokens/s for one pass a day: each of {a.silos} silos", [f"{per_silo_tps:,.0f}"])
        add("bf16 compute per silo (4N per token + tower)", [f"{need_tflops:.0f} TFLOP/s = "
                                                            f"{need_tflops / (a.gpu_tflops * a.mfu):.2f} H100 at {a.mfu:.0%} MFU"])
    for label, vals in rows.items():
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    lines += ["", f"Secure-sum rates: {rates['mask_s_per_value'] * 1e9:.1f} ns per value to mask (one silo, "
                  f"k={a.k}) + {rates['unmask_s_per_value'] * 1e9:.1f} ns per value to unmask (aggregator), "
                  f"{rates['source']}; a Fed-CMP round's two sums together carry the r(m+n) values per matrix, "
                  "and each sum's fixed cost (key agreement, Shamir shares) is left out."]
    print("\n".join(lines))
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
