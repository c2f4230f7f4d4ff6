"""How much of non-DP FedAvg's gain lies in each candidate basis: the ceiling of training in it.

    python examples/clipart/ceilings.py --runs results/clipart_runs --seed 0

DP training in a basis U (``silo.subspace``: W = W_t + U·C per weight matrix) can only move each
matrix inside span(U). This script trains the table's non-DP FedAvg row for one seed (the same
θ_0, read from ``--runs``, the same drawings and trainer; a plain mean instead of SecAgg, which
sums the same updates), then puts θ_0 + U Uᵀ Δ per weight matrix (biases in full) through the
held-out caption NLL for each basis and rank, and prints the share of the gap warm start → FedAvg
that the projection keeps:

- ``oracle``: Δ's own top left singular directions (private: the best any rank-r basis can do);
- ``warm``: θ_0 − θ_init (``--dp-basis warm``); ``finetune``: one more public pass from θ_0
  (``--dp-basis finetune``); ``public gradient``: the loss gradient at θ_0 on the public set;
- ``round 0 mean``: the silos' round-0 mean update (private; what a basis from a released
  round-0 aggregate would hold before DP noise).

Ends with one JSON line of the same figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as R  # noqa: E402 - examples/clipart/run.py: the table's data, draws and recipe

import torch  # noqa: E402
from common_real import caption_nll, say  # noqa: E402


def left(m: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-``rank`` left singular vectors of ``m`` (m×rank, float64 SVD)."""
    return torch.linalg.svd(m.double(), full_matrices=False)[0][:, :rank].to(m.dtype)


def public_gradient(model, params: dict, shard_) -> dict:
    """The summed loss gradient at ``params`` over one public shard, per weight matrix."""
    model.load_projector_state(params)
    model.projector.train()
    for p in model.projector.parameters():
        p.grad = None
        p.requires_grad_(True)
    f, b = shard_.batch(torch.arange(len(shard_)))
    model.caption_nll(b, model.projector(f)).sum().backward()
    out = {f"{i}.weight": m.weight.grad.detach().clone() for i, m in enumerate(model.projector) if hasattr(m, "weight")}
    for p in model.projector.parameters():
        p.grad = None  # nothing left behind for the next user of the model
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("results/clipart_runs"), help="run.py's --out (θ_0 and its settings)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64, 128])
    args = ap.parse_args(argv)
    saved = args.runs / f"theta0-seed{args.seed}.safetensors"
    sfile = args.runs / f"seed{args.seed}.json"
    if not saved.is_file() or not sfile.is_file():
        print(f"ceilings: {saved} or {sfile} is missing; run examples/clipart/run.py --out {args.runs} first",
              file=sys.stderr)
        return 2
    from safetensors.torch import load_file

    from fedalign.silo.trainer import LocalTrainer, TrainSettings

    a = json.loads(sfile.read_text())["settings"]
    info, recs, feats, sp, model, held, base = R.load_world(a["tokens"], a["eval_nll"], a["eval_groups"])
    theta0, init = load_file(str(saved)), R.projector_init(model, feats, args.seed)
    settings = TrainSettings(batch_size=a["batch"], lr=a["lr"])
    _, pub = R.public_passes(model, feats, recs, sp, args.seed, a["warm_passes"])

    def nll(params) -> float:
        model.load_projector_state(params)
        model.projector.eval()
        return caption_nll(model, held.feats, held.texts)

    # the table's FedAvg row without SecAgg: the same trainers (seeds), draws and rounds
    draws = R.silo_draws(sp, args.seed, a["rounds"], a["shard"])
    trainers = [LocalTrainer(model, settings, generator=torch.Generator().manual_seed(args.seed * 101 + k))
                for k in range(len(draws))]
    theta, first, wf = dict(theta0), None, float("nan")
    for t in range(a["rounds"]):
        deltas = [tr.train_round(theta, R.shard(model, feats, recs, draws[k][t], t)).delta
                  for k, tr in enumerate(trainers)]
        mean = {k: sum(d[k] for d in deltas) / len(deltas) for k in theta}
        first = first or mean
        theta = {k: theta[k] + mean[k] for k in theta}
        wf = nll(theta)
        say(f"  FedAvg round {t + 1}: held-out NLL {wf:.4f}")
    w0 = nll(theta0)
    delta = {k: theta[k] - theta0[k] for k in theta}
    mats = [k for k in theta0 if theta0[k].ndim == 2]
    ft = R.finetune_theta(model, theta0, pub, settings, args.seed)  # run.py's --dp-basis finetune
    grad = public_gradient(model, theta0, pub[0])
    sources = {"oracle (private)": delta, "warm": {k: theta0[k] - init[k] for k in mats},
               "finetune": {k: ft[k] - theta0[k] for k in mats}, "public gradient": grad,
               "round 0 mean (private)": first}
    say(f"  no image {base['nll']:.4f}, warm start {w0:.4f}, FedAvg {wf:.4f}: gap {w0 - wf:.4f}")
    print("| basis | " + " | ".join(f"rank {r}" for r in args.ranks) + " |")
    print("|---|" + "---|" * len(args.ranks))
    out: dict = {"seed": args.seed, "warm": w0, "fedavg": wf, "no_image": base["nll"], "share": {}}
    for name, src in sources.items():
        shares = []
        full = {k: left(src[k], max(args.ranks)) for k in mats}  # one SVD per matrix; each rank is a prefix
        for r in args.ranks:
            bases = {k: U[:, :r] for k, U in full.items()}
            proj = {k: theta0[k] + (bases[k] @ (bases[k].T @ delta[k]) if k in bases else delta[k]) for k in theta0}
            shares.append((w0 - nll(proj)) / (w0 - wf))
        out["share"][name] = dict(zip(map(str, args.ranks), shares))
        print(f"| {name} | " + " | ".join(f"{s:.3f}" for s in shares) + " |")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
