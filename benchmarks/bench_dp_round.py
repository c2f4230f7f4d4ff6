"""DP round time against non-DP round time at DP-sized batches (issue #11's goal: <= 1.5x).

One silo round through :class:`silo.trainer.LocalTrainer` on the same prepared shard (tower
features cached), same batch size, same number of passes: plain shuffled batches against
Poisson batches with ghost clipping, noise and accounting (σ derived from the budget), the
logical batch run as physical micro-batches. Repeats are interleaved; the best of each is
reported, median/best as a noise gauge. Ends with one JSON line of the figures.

    python benchmarks/bench_dp_round.py [--shard 1024] [--batch 256] [--physical 128] [--epochs 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from fedalign.host.process import apply_process_defaults

apply_process_defaults()

import torch  # noqa: E402

from fedalign.silo.data import Sample  # noqa: E402
from fedalign.silo.model import load_alignment_model  # noqa: E402
from fedalign.silo.privacy import DPSettings, PrivacyAccountant  # noqa: E402
from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--physical", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny world (seconds to build)")
    args = ap.parse_args(argv)
    from fedalign.world import CAPTION_PROMPT, TINY_SPEC, WorldSpec, build_world, make_scenario

    art = build_world(TINY_SPEC if args.tiny else WorldSpec())
    model = load_alignment_model(str(art.vision_path), str(art.lm_path), device="auto",
                                 generator=torch.Generator().manual_seed(0))
    sc = make_scenario("iid", 1, 0, samples_per_silo=args.shard, test_size=1, n_unreliable=0, min_samples=1)
    shard = prepare_shard(model, [Sample(s.image, CAPTION_PROMPT, s.caption) for s in sc.silos[0]])
    theta = model.projector_state()
    settings = TrainSettings(batch_size=args.batch, lr=3e-3, local_epochs=args.epochs,
                             physical_batch_size=args.physical)
    plain = LocalTrainer(model, settings, generator=torch.Generator().manual_seed(0))

    def dp_trainer() -> LocalTrainer:  # a fresh budget each round: one round's cost is what we time
        return LocalTrainer(model, settings, dp=DPSettings(noise_multiplier=None, max_grad_norm=1.0),
                            accountant=PrivacyAccountant(args.epsilon, 1e-5),
                            generator=torch.Generator().manual_seed(0))

    plan = dp_trainer().plan_dp([args.shard])
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    plain.train_round(theta, shard)  # warm-up
    dp_trainer().train_round(theta, shard)
    for _ in range(args.repeats):
        for name in ("plain", "dp"):
            tr = plain if name == "plain" else dp_trainer()
            t0 = time.perf_counter()
            tr.train_round(theta, shard)
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["dp"] / best["plain"]
    print(plan.describe())
    for k, v in times.items():
        print(f"{k:5s} round: best {best[k]:.3f}s, median/best {statistics.median(v) / best[k]:.2f}")
    print(f"DP round / plain round = {ratio:.2f}x (goal <= 1.5x) at batch {args.batch}, physical {args.physical}, "
          f"shard {args.shard}, {args.epochs:g} pass(es)")
    print(json.dumps({"bench": "dp_round", "shard": args.shard, "batch": args.batch, "physical": args.physical,
                      "epochs": args.epochs, "sigma": round(plan.noise_multiplier, 4), "plain_s": round(best["plain"], 4),
                      "dp_s": round(best["dp"], 4), "dp_over_plain": round(ratio, 3), "device": str(model.device),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
