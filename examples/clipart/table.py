"""results/clipart.md from examples/clipart/run.py's seed<N>.json files (paired seeds).

    python examples/clipart/table.py --runs results/clipart_runs --out results/clipart.md

Every figure is a mean ± sample std over the seeds found; the checks of issue 27's "Must show"
are computed per seed (paired) and the table says beside each whether it is met.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
from pathlib import Path

EPS = (8.0, 4.0, 2.0, 1.0)  # issue 27's ε rows, DP
# (key, label, kind): kind "nodp" rows see rounds × shard drawings per silo, "dp" rows dp_rounds × dp_shard ×
# dp_passes (expected), "central" all silos' drawings pooled, "local"/"best" each silo alone (mean / best silo)
BASE_ROWS = (("no_image", "same LM, no image", "none"), ("warm", "public warm start only (θ_0, no DP)", "public"),
             ("local", "local-only, no DP: mean over silos", "local"),
             ("local:best", "local-only, no DP: best single silo", "local"),
             ("fedavg", "FedAvg, no DP", "nodp"), ("fedavgm", "FedAvgM β 0.5, no DP", "nodp"),
             ("fedcmp", "Fed-CMP, no DP", "nodp"), ("fedcmp_r64", "Fed-CMP rank 64, no DP", "nodp"),
             ("fedcmp_noflush", "Fed-CMP without the final flush of its residuals, no DP", "nodp"),
             ("fedcmp_off", "Fed-CMP with reliability off (no public reference), no DP", "nodp"),
             ("central", "centralized, no DP (all silos pooled)", "central"))
DP_ROWS = (("dp_fedavg", "FedAvg, DP ε {e}"), ("dp_fedavgm", "FedAvgM β 0.5, DP ε {e}"),
           ("dp_fedcmp_sub", "Fed-CMP at the public basis' rank, DP ε {e}"),
           ("dp_local", "local-only, DP ε {e}: mean over silos"), ("dp_local:best", "local-only, DP ε {e}: best single silo"))
OPTIONAL = {"dp_fedcmp", "fedcmp_noflush", "fedcmp_off", "fedcmp_r64"}  # shown when run, not one of issue 27's rows


def key_for(name: str, eps: float, default: float) -> str:
    """run.py's row key (``row_key``): the name at the default ε, ``name@eps<ε>`` at another; a part of a
    row (``dp_local:best``) keeps its part after the key (``dp_local@eps4:best``)."""
    base, colon, part = name.partition(":")
    return name if eps == default else f"{base}@eps{eps:g}{colon}{part}"


def rows_for(a: dict) -> list[tuple[str, str, str]]:
    out = list(BASE_ROWS)
    for eps in EPS:
        out += [(key_for(k, eps, a["dp_epsilon"]), label.format(e=f"{eps:g}"), "dp") for k, label in DP_ROWS]
    out.append((key_for("dp_fedcmp", a["dp_epsilon"], a["dp_epsilon"]), f"Fed-CMP rank {a['rank']}, DP ε "
                f"{a['dp_epsilon']:g}", "dp"))
    return out


def ms(xs: list[float], fmt: str = "{:.3f}") -> str:
    if not xs:
        return "-"
    return fmt.format(st.mean(xs)) + (" ± " + fmt.format(st.stdev(xs)) if len(xs) > 1 else "")


def load(runs: Path) -> list[dict]:
    files = sorted(runs.glob("seed*.json"))
    if not files:
        raise SystemExit(f"table: no seed*.json in {runs}; run examples/clipart/run.py --out {runs} first")
    return [json.loads(f.read_text()) for f in files]


def row(s: dict, name: str) -> dict | None:
    """A row of one seed; ``local:best`` is the local-only row's best single silo (with its upload and ε)."""
    if name == "no_image":
        return s["no_image"]
    base, _, part = name.partition(":")
    r = s["rows"].get(base)
    if r is None or not part:
        return r
    return {**r, **r[part]}


def seen(a: dict, kind: str, n_silos: int) -> str:
    """Drawings one row's training saw (per silo, or pooled)."""
    if kind == "nodp" or kind == "local":
        return f"{a['rounds'] * a['shard']}/silo"
    if kind == "dp":
        return f"{a['dp_rounds'] * a['dp_shard'] * a['dp_passes']:g}/silo"
    if kind == "central":
        return f"{n_silos * a['rounds'] * a['shard']} pooled"
    return {"public": "260 public × 2", "none": "-"}.get(kind, "-")


def spread(xs: list[float]) -> float:
    """The sample std of paired differences (0 for one seed): the tie margin of the checks."""
    return st.stdev(xs) if len(xs) > 1 else 0.0


def paired(seeds, f) -> list[float]:
    out = []
    for s in seeds:
        try:
            out.append(f(s))
        except (KeyError, TypeError, ZeroDivisionError):
            pass
    return out


def dims(a: dict) -> str:
    """Trained numbers under DP in the warm start's basis (r·n per weight matrix of the 1,280→576→576 MLP, and the
    biases), for the header."""
    r = a["dp_subspace"]
    return f"{r * (1280 + 576) + 2 * 576:,}" if r else "1,070,208"


def environment(seeds: list[dict]) -> list[str]:
    """The packages and the cached features the figures came from (run.py's ``env``), as one paragraph: the
    same code in another environment gave other figures once, so a reader can tell which one this is."""
    envs = [s.get("env") for s in seeds]
    if not any(envs):
        return []
    e = next(x for x in envs if x)
    same = all(x == e for x in envs)
    pk = ", ".join(f"{k} {v}" for k, v in e.items() if k != "features")
    return [f"Environment{'' if same else ' (of the first seed; the seeds differ)'}: {pk}; tower features "
            f"{', '.join(e.get('features') or ['-'])}.", ""]


def build(seeds: list[dict]) -> str:
    s0 = seeds[0]
    d, a = s0["data"], s0["settings"]
    n = len(seeds)
    lines = [
        "# OpenClipart: a real image-caption federation (examples/clipart)",
        "",
        f"Made by `python examples/clipart/table.py` from {n} paired seed(s) ({', '.join(str(s['seed']) for s in seeds)}) "
        "of `examples/clipart/run.py`; mean ± sample std over seeds. Every row of one seed starts from the same "
        "projector initialisation and sees the same drawings.",
        "",
        f"Data: Debian's openclipart-svg/-png ({d['drawings']:,} public-domain drawings), {d['records']:,} after "
        f"capping collections of near-duplicates and dropping 19 oversized PNGs; captions from title, "
        f"description and keywords. 5 silos by category {d['silos']}, held-out test {d['test']} "
        f"(NLL on {d['eval_nll']}, 10-way retrieval on {d['eval_retrieval']}), coordinator's public set "
        f"{d['public']} (disjoint from every silo). Tower: {s0['tower']} — **an ImageNet-1k classifier, trained "
        "on labels, not on text; no CLIP/SigLIP weights are reachable offline**. LM: SmolLM2-135M-Instruct, "
        "frozen; only the `mlp2x_gelu` projector (1.07 M weights) trains.",
        "",
        f"Settings: warm start {a['warm_passes']} passes over the public set (batch {a['batch']}, AdamW lr {a['lr']}); "
        f"without DP {a['rounds']} rounds × {a['shard']} fresh drawings per silo, one pass (batch {a['batch']}, "
        f"lr {a['lr']}); with DP {a['dp_rounds']} rounds × {a['dp_shard']} fresh drawings per silo (each round's shard "
        f"disjoint: the rounds compose in parallel), expected Poisson batch {a['dp_batch']} (micro-batches "
        f"{a.get('dp_micro', 64)}), {a['dp_passes']:g} pass(es) over a round's shard, clip {a['dp_clip']}, AdamW lr "
        f"{a['dp_lr']}, σ derived from ε (δ 1e-5) per silo by the silo's accountant (RDP), training in a public "
        f"basis (rank {a['dp_subspace']}: {dims(a)} trained and noised numbers; the top left singular directions of "
        + ("one more pass over the public set from θ_0" if a.get("dp_basis") == "finetune" else "θ_0 − θ_init")
        + f", public data only). Fed-CMP rank {a['rank']}{' (the toolkit default)' if a['rank'] == 16 else ''} "
        f"(reliability \"reference\" without DP, off under DP). All federated sums over real SecAgg. Local-only: "
        "each silo trained alone from θ_0 on its own shards with the same recipe (no upload). Centralized: every "
        "silo's round-t shard pooled and trained by one trainer, the same rounds and passes.",
        "",
        *environment(seeds),
        "| run | drawings seen | held-out NLL | cut vs no image | 10-way retrieval | retrieval, prior removed | "
        "upload B/silo/round | ε | noise/clip on the mean gradient |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label, kind in rows_for(a):
        if not any(row(s, name) for s in seeds):
            if name.split("@")[0] not in OPTIONAL:
                lines.append(f"| {label} | not run (time) | | | | | | | |")
            continue
        nll = paired(seeds, lambda s: row(s, name)["nll"])
        cut = paired(seeds, lambda s: 1 - row(s, name)["nll"] / s["no_image"]["nll"])
        ret = paired(seeds, lambda s: row(s, name)["retrieval"])
        pmi = paired(seeds, lambda s: row(s, name)["retrieval_pmi"])
        up = paired(seeds, lambda s: row(s, name)["upload_bytes_per_silo_per_round"])
        eps = paired(seeds, lambda s: row(s, name)["epsilon"])
        ntc = paired(seeds, lambda s: row(s, name)["noise_to_clip"])
        best = paired(seeds, lambda s: row(s, name)["best_silo"]) if name.endswith(":best") else []
        note = f" (silo {'/'.join(str(b) for b in best)} by seed)" if best else ""
        n_run = len(nll)
        lines.append(f"| {label}{note} | {seen(a, kind, len(d['silos']))} | {ms(nll)}"
                     f"{'' if n_run == len(seeds) else f' (n={n_run})'} | "
                     f"{ms([100 * c for c in cut], '{:.1f}')}% | {ms(ret)} | {ms(pmi)} | "
                     f"{'-' if name == 'no_image' else (f'{st.mean(up):,.0f}' if up else '-')} | "
                     f"{ms(eps, '{:.2f}') if eps else '-'} | {ms(ntc, '{:.2f}') if ntc else '-'} |")
    lines += ["", "Retrieval: for each held-out drawing, the LM's summed log-likelihood of each of 10 held-out "
              "captions given the image; the right one must score highest. Without an image the LM picks the "
              "same caption for all ten, so exactly 0.100. \"Prior removed\": the same with each caption's "
              "no-image log-likelihood subtracted (its pointwise mutual information with the image). The standard "
              "error of either at "
              f"{d['eval_retrieval']} drawings is about ±{(0.25 / d['eval_retrieval']) ** 0.5:.2f}. Noise/clip: σ·√d/B, "
              "the norm of one DP step's noise on the mean clipped gradient in units of the clip norm "
              "(fedalign.silo.privacy's plan; it warns above 10).", ""]

    # issue 27's "Must show", per seed, paired
    lines += ["## Issue 27's targets, paired per seed", "", "| target | measured | met? |", "|---|---|---|"]

    def check(label: str, vals: list[float], ok, fmt="{:.3f}") -> None:
        if not vals:
            lines.append(f"| {label} | not measured | **not measured** |")
            return
        verdict = "context" if ok is None else ("yes" if ok(st.mean(vals)) else "**no: missed**")
        lines.append(f"| {label} | {ms(vals, fmt)} (n={len(vals)}) | {verdict} |")

    def nll(s, k):
        return row(s, k)["nll"]

    for dp, nodp, nm in (("dp_fedavg", "fedavg", "FedAvg"), ("dp_fedcmp_sub", "fedcmp", "Fed-CMP (public basis)"),
                         ("dp_fedavgm", "fedavgm", "FedAvgM")):
        if nm == "FedAvgM" and not any(row(s, dp) for s in seeds):
            continue
        check(f"DP {nm} ε {a['dp_epsilon']:g} closes ≥ 50% of the gap warm start → non-DP {nm.split(' (')[0]} (NLL)",
              paired(seeds, lambda s: (nll(s, "warm") - nll(s, dp)) / (nll(s, "warm") - nll(s, nodp))),
              lambda m: m >= 0.5, "{:.2f}")
        check(f"DP {nm} ε {a['dp_epsilon']:g} keeps ≥ 75% of non-DP {nm.split(' (')[0]}'s cut vs no image (NLL)",
              paired(seeds, lambda s: (s["no_image"]["nll"] - nll(s, dp)) / (s["no_image"]["nll"] - nll(s, nodp))),
              lambda m: m >= 0.75, "{:.2f}")
    for local, what in (("local:best", "the best silo alone without DP"), ("dp_local:best", "the best silo alone under DP")):
        if any(row(s, local) for s in seeds):  # the title: DP federated beats not federating at all
            diff = paired(seeds, lambda s: nll(s, "dp_fedavg") - nll(s, local))
            sd = spread(diff)
            check(f"DP FedAvg ε {a['dp_epsilon']:g} beats {what}: NLL(DP FedAvg) − NLL({local.split(':')[0]}, best "
                  "silo), beats = more than one paired std below 0", diff, lambda m: m < -sd)
    check("(for reading the line above: the public warm start alone keeps this share of non-DP FedAvg's cut)",
          paired(seeds, lambda s: (s["no_image"]["nll"] - nll(s, "warm")) / (s["no_image"]["nll"] - nll(s, "fedavg"))),
          None, "{:.2f}")
    for local, what in (("local", "without DP"), ("dp_local", "under DP")):  # each silo's own choice, not the best one's
        per = [(nll(s, "dp_fedavg"), p["nll"]) for s in seeds if row(s, local) and row(s, "dp_fedavg")
               for p in row(s, local).get("per_silo", [])]
        if per:
            lines.append(f"| (context) silos that end lower in DP FedAvg ε {a['dp_epsilon']:g} than alone {what}, "
                         f"over silos and seeds | {sum(f < own for f, own in per)} of {len(per)} | context |")
    diff = paired(seeds, lambda s: nll(s, "dp_fedcmp_sub") - nll(s, "dp_fedavg"))
    sd = spread(diff)
    check(f"DP Fed-CMP (public basis) ties or beats DP FedAvg at ε {a['dp_epsilon']:g}: NLL(Fed-CMP) − NLL(FedAvg), "
          "tie = within one paired std", diff, lambda m: m <= sd)
    check("… at ≥ 3× less upload (FedAvg bytes / Fed-CMP bytes)",
          paired(seeds, lambda s: row(s, "dp_fedavg")["upload_bytes_per_silo_per_round"]
                 / row(s, "dp_fedcmp_sub")["upload_bytes_per_silo_per_round"]), lambda m: m >= 3, "{:.2f}")
    diff = paired(seeds, lambda s: nll(s, "fedcmp") - nll(s, "fedavgm"))
    sd = spread(diff)
    check("non-DP Fed-CMP ties or beats FedAvgM β 0.5: NLL(Fed-CMP) − NLL(FedAvgM), tie = within one paired std",
          diff, lambda m: m <= sd)
    if any(row(s, "fedcmp_r64") for s in seeds):  # the rank earlier tables used
        diff = paired(seeds, lambda s: nll(s, "fedcmp_r64") - nll(s, "fedavgm"))
        sd = spread(diff)
        check("Fed-CMP at rank 64 ties or beats FedAvgM β 0.5: NLL(Fed-CMP r64) − NLL(FedAvgM), "
              "tie = within one paired std", diff, lambda m: m <= sd)
    if any(row(s, "fedcmp_off") for s in seeds):  # the same check for Fed-CMP without its public reference
        diff = paired(seeds, lambda s: nll(s, "fedcmp_off") - nll(s, "fedavgm"))
        sd = spread(diff)
        check("Fed-CMP with reliability off ties or beats FedAvgM β 0.5: NLL(Fed-CMP off) − NLL(FedAvgM), "
              "tie = within one paired std", diff, lambda m: m <= sd)
    if any(row(s, "fedcmp_noflush") for s in seeds):
        check("(context) what the final flush is worth without DP: NLL(Fed-CMP) − NLL(Fed-CMP without the flush)",
              paired(seeds, lambda s: nll(s, "fedcmp") - nll(s, "fedcmp_noflush")), None)
    for eps in EPS[1:]:  # the same two checks at the lower budgets, when run
        k_avg, k_cmp = key_for("dp_fedavg", eps, a["dp_epsilon"]), key_for("dp_fedcmp_sub", eps, a["dp_epsilon"])
        if any(row(s, k_avg) for s in seeds):
            check(f"(context) DP FedAvg ε {eps:g}: share of the gap warm start → non-DP FedAvg closed",
                  paired(seeds, lambda s: (nll(s, "warm") - nll(s, k_avg)) / (nll(s, "warm") - nll(s, "fedavg"))),
                  None, "{:.2f}")
        if any(row(s, k_cmp) for s in seeds):
            check(f"(context) DP Fed-CMP (public basis) ε {eps:g}: share of the gap warm start → non-DP Fed-CMP closed",
                  paired(seeds, lambda s: (nll(s, "warm") - nll(s, k_cmp)) / (nll(s, "warm") - nll(s, "fedcmp"))),
                  None, "{:.2f}")
    lines += ["", "A row marked \"not run (time)\" was not measured in this run for lack of CPU time; the targets "
              "that need it say \"not measured\". examples/real's DP target is in examples/real/README.md.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("results/clipart_runs"))
    ap.add_argument("--out", type=Path, default=Path("results/clipart.md"))
    args = ap.parse_args(argv)
    text = build(load(args.runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
