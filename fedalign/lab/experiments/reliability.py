"""The "reliability" family (issue #15): Fed-CMP reliability against the coordinator's public reference,
results/reliability.md and the ρ plot results/reliability_rho.png.

    fedalign-lab experiment run reliability [--set variants=unreliable,unreliable-hard] [--set seeds=0,1,2] [--row LABEL]
    fedalign-lab experiment table reliability

A job is one (variant, seed) problem (results Setup: 5 silos, 10 rounds, 96 samples per silo per round);
its rows not yet in results/reliability_runs/<variant>-s<seed>.jsonl run. Rows the committed results
table already ran on the same world weights (FedAvg, FedAvgM β=0.5, FedProx; results/fedcmp_runs/) are
read from there instead of rerun, for the four original scenarios at the default size and world; the
"unreliable-hard" variant runs its own.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedalign.lab.experiments.family import Family, ints
from fedalign.lab.experiments.fedcmp import Setup, setup_for
from fedalign.lab.tables import RESULTS, fmt_ms, paired

__all__ = ["VARIANTS", "Row", "ROWS", "MAIN_LABEL", "FAMILY"]

COMMITTED = RESULTS / "fedcmp_runs"
PNG = "reliability_rho.png"

# variant -> (scenario, ProblemOptions overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "unreliable": ("unreliable", {}),  # 2 largest silos, 20% mismatched captions (the default scenario)
    "unreliable-hard": ("unreliable", {"corruption": 0.5, "n_unreliable": 2}),  # 2 silos, half mismatched
    "label": ("label", {}),
    "domain": ("domain", {}),
    "style": ("style", {}),
}
UNRELIABLE = ("unreliable", "unreliable-hard")


@dataclass(frozen=True)
class Row:
    label: str
    strategy: str
    options: dict = field(default_factory=dict)  # FedCMPConfig fields
    oracle: bool = False
    reference_kind: str = "update"  # the coordinator's reference (problem option)
    group: str = "ablation"  # baseline | anchor | main | ablation
    variants: tuple[str, ...] = tuple(VARIANTS)
    committed: str | None = None  # label of the same run in results/fedcmp_runs (four original scenarios)
    true_rho: bool = False  # diagnostic: ρ = 0 for the known-corrupted silos, 1 for the others (lab only)


# The reliability configuration under test (the must-show row): FLTrust's reference (the coordinator's
# own update from θ_t on its public set), ρ weighting both phases' sums, κ = 0.02, each silo's ρ smoothed
# over rounds with its own last ρ (0.7). The ablations vary the unsmoothed row (MAIN), which came first.
MAIN = {"reliability": "reference", "kappa": 0.02, "rho_smoothing": 0.0}  # explicit: the default is now 0.7
MAIN_LABEL = "Fed-CMP reliability: public reference, κ=0.02, ρ smoothed 0.7"
# labels the runs were recorded under before the main row changed (smoothing came after the first runs)
ALIASES = {"Fed-CMP reliability: public reference, κ=0.02": "public reference, κ=0.02, unsmoothed",
           "public reference, κ=0.02, ρ smoothed 0.7": MAIN_LABEL}

ROWS = [
    Row("FedAvg", "fedavg", group="baseline", committed="FedAvg"),
    Row("FedAvgM β=0.5", "fedavgm-b0.5", group="baseline", committed="FedAvgM β=0.5"),
    Row("FedProx", "fedprox", group="baseline", variants=("style",), committed="FedProx"),
    Row("Fed-CMP reliability off", "fedcmp", {"reliability": "off"}, group="anchor", committed="Fed-CMP r=16"),
    Row("Fed-CMP oracle (unreliable silos dropped)", "fedcmp", {"reliability": "off"}, oracle=True, group="anchor",
        variants=UNRELIABLE),
    Row(MAIN_LABEL, "fedcmp", {**MAIN, "rho_smoothing": 0.7}, group="main"),
    Row("public reference, κ=0.02, unsmoothed", "fedcmp", MAIN),
    Row("public reference, κ=0.1", "fedcmp", {**MAIN, "kappa": 0.1}),
    Row("public reference, κ=0.3", "fedcmp", {**MAIN, "kappa": 0.3}),
    # ablations (unreliable variants): which reference, where ρ acts, κ, magnitude normalisation
    Row("ρ in the fusion only (basis from every silo alike)", "fedcmp", {**MAIN, "reliable_basis": False}),
    Row("contrast reference (clean − shuffled-caption update)", "fedcmp", MAIN, reference_kind="contrast"),
    Row("public reference, κ=1", "fedcmp", {**MAIN, "kappa": 1.0}, variants=UNRELIABLE),
    Row("public reference, normalised (FLTrust magnitudes)", "fedcmp", {**MAIN, "normalize": True},
        variants=UNRELIABLE),
    Row("public reference, ρ floor 0.1", "fedcmp", {**MAIN, "rho_floor": 0.1}, variants=UNRELIABLE),
    Row("diagnostic: true ρ (0 corrupted, 1 clean), fusion only", "fedcmp", {**MAIN, "reliable_basis": False},
        true_rho=True, variants=("unreliable",)),
    Row("diagnostic: true ρ (0 corrupted, 1 clean), basis and fusion", "fedcmp", MAIN, true_rho=True,
        variants=("unreliable",)),
    Row("previous-step reference (docs/design.md §4 blend), κ=0.02", "fedcmp", {"reliability": "blend", "kappa": 0.02},
        variants=UNRELIABLE),
]


OPTIONS = {"variants": ",".join(VARIANTS), "seeds": "0,1,2", "silos": Setup.silos, "rounds": Setup.rounds,
           "samples_per_round": Setup.samples_per_round, "test_size": Setup.test_size, "world": "default"}


def _jobs(o: dict) -> list[tuple[str, int]]:
    from fedalign.protocol.errors import ConfigError

    variants = [v for v in o["variants"].split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"variants: unknown {bad}; expected {list(VARIANTS)}")
    return [(v, s) for s in ints(o["seeds"]) for v in variants]


def _size(o: dict) -> dict:
    return {k: o[k] for k in ("silos", "rounds", "samples_per_round", "test_size", "world")}


def _pending(variant: str, seed: int, o: dict, lines: list[dict]) -> dict[str, Row]:
    """A row is done when a line has its label at this size (lines without a size ran at the default)."""
    done = {ALIASES.get(ln["label"], ln["label"]) for ln in lines if ln.get("size", _size(OPTIONS)) == _size(o)}
    return {r.label: r for r in ROWS if variant in r.variants and r.label not in done}


def _build(variant: str, seed: int, o: dict):
    from fedalign.lab.scenarios import ProblemOptions, build_problem

    scenario, over = VARIANTS[variant]
    st = setup_for(o)
    extra = {"batch_size": st.batch_size, "lr": st.lr, "test_size": st.test_size, "world": o["world"]}
    opts = ProblemOptions(n_silos=st.silos, rounds=st.rounds, seed=seed, samples_per_round=st.samples_per_round,
                          extra=extra, **over)
    return build_problem(scenario, opts)


def _committed(variant: str, seed: int, label: str, o: dict) -> dict | None:
    """The same run in the committed results table, if this job is at its size and world."""
    path = COMMITTED / f"{variant}-s{seed}.jsonl"
    if variant not in ("unreliable", "label", "domain", "style") or _size(o) != _size(OPTIONS) or not path.exists():
        return None
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["label"] == label:
            return rec
    return None


def _true_rho_strategy(strat, problem):
    """Fed-CMP whose ρ is the experimenter's knowledge (0 for the corrupted silos, 1 otherwise).

    Diagnostic only: it shows what reliability could give with a perfect score. The simulator
    calls every silo's contribution in silo order, once per factored matrix and phase, which is
    how the silo is known here; a real silo never knows this."""
    from fedalign.fedcmp.strategies import FedCMP

    bad = set(problem.unreliable)
    n_mat = sum(1 for t in problem.init_params().values() if t.ndim == 2)
    calls = [0]

    class TrueRho(FedCMP):
        def _rho(self, name, delta, public, where, silo_state):
            k = (calls[0] // n_mat) % problem.n_silos
            calls[0] += 1
            return 0.0 if k in bad else 1.0

    # phase 0 calls _rho only with the reliable basis: count the other phase-0 calls too
    out = TrueRho(strat.config)
    if not strat.config.reliable_basis:
        base = out.silo_contribution

        def contribution(phase, delta, weight, public, silo_state):
            if phase == 0:
                calls[0] += n_mat
            return base(phase, delta, weight, public, silo_state)

        out.silo_contribution = contribution
    return out


def _run(problem, row: Row, variant: str, seed: int, o: dict) -> dict:
    from fedalign.fedcmp.strategies import make_strategy
    from fedalign.lab.runner import simulate_problem

    rec = _committed(variant, seed, row.committed, o) if row.committed else None
    if rec is not None:
        return {**rec, "label": row.label, "group": row.group, "from": "results/fedcmp_runs", "variant": variant,
                "seed": seed}
    problem, st = problem(), setup_for(o)
    t0 = time.perf_counter()
    strat = make_strategy(row.strategy, seed=seed, **row.options) if row.strategy == "fedcmp" else \
        make_strategy(row.strategy)
    if row.true_rho:
        strat = _true_rho_strategy(strat, problem)
    if hasattr(problem, "cfg"):
        problem.cfg["reference_kind"] = row.reference_kind
    keep = [k for k in range(problem.n_silos) if k not in problem.unreliable] if row.oracle else None
    res = simulate_problem(problem, strat, st.rounds, silos=keep, eval_every=st.eval_every)
    rho = [{"round": r["round"], "rho": r["rho"]} for r in res.records if "rho" in r]
    return {**{k: v for k, v in res.final.items() if k != "silos"}, "label": row.label, "group": row.group,
            "reference_kind": row.reference_kind if row.options.get("reliability") == "reference" else None,
            "unreliable": list(problem.unreliable), "rho_curve": rho, "seconds": time.perf_counter() - t0,
            "variant": variant, "seed": seed, "world": getattr(problem, "world_id", None), "size": _size(o)}


# --------------------------------------------------------------------------- table


def _by_variant(lines: list[dict]) -> dict[str, dict[int, dict[str, dict]]]:
    out: dict = {}
    for rec in lines:
        rec["label"] = ALIASES.get(rec["label"], rec["label"])
        out.setdefault(rec["variant"], {}).setdefault(rec["seed"], {})[rec["label"]] = rec
    return out


def _rho_split(rec: dict) -> tuple[int, int, int, list[float], list[float]]:
    """(rounds where mean corrupted ρ < mean clean ρ, rounds where max corrupted < min clean, rounds,
    corrupted ρ values, clean ρ values)."""
    bad = set(str(k) for k in rec["unreliable"])
    below = strict = n = 0
    rb, rc = [], []
    for r in rec["rho_curve"]:
        b = [v for k, v in r["rho"].items() if k in bad]
        c = [v for k, v in r["rho"].items() if k not in bad]
        if not b or not c:
            continue
        n += 1
        below += statistics.fmean(b) < statistics.fmean(c)
        strict += max(b) < min(c)
        rb += b
        rc += c
    return below, strict, n, rb, rc


NOTES = """## What was tried, in order (numbers: held-out NLL, unreliable scenario, seed 0 unless said)

1. **The reference in the shared basis, ρ in the fusion only** (first build, commit 59a420c): the
   coordinator's update Δ_ref from θ_t on its public set, broadcast after phase 0 as Uᵀ Δ_ref;
   each silo's ρ = max(0, cos(Uᵀ Δ_k, Uᵀ Δ_ref)); the blend of docs/design.md §4. ρ separated the
   corrupted silos in most rounds (clean about 0.3-0.6, corrupted 0.05-0.4), yet NLL moved from
   0.4901 (off) to 0.4886 (contrast reference, κ = 0.02): 5% of the gap to the oracle (0.4610).
2. **Why: the basis (seed 0).** With the *true* ρ (0 for the two corrupted silos, 1 for the
   others) in the fusion only, NLL was 0.5126, worse than off; with the true ρ weighting phase 0's
   basis sum too, 0.4522 (better than the oracle). U = orth(Σ P_k) built from every silo alike
   spends its rank on the corrupted silos' directions, and the clean silos' coefficients lose
   what U misses. Seeds 1 and 2 (the diagnostic rows above) are kinder to the fusion-only form
   (0.4646 and 0.4376, below off), so over three seeds the basis weighting helps on average, not
   in every seed; the ablation row "ρ in the fusion only" shows the same with the real ρ.
3. **So ρ must exist before phase 0**: the coordinator's reference is now broadcast with the
   round's start (computed from θ_t at the end of the previous round; from θ_0 by
   `init_public`), each silo takes ρ = max(0, cos(Δ_k, Δ_ref)) in the matrix's own space (U does
   not exist yet) and weighs phase 0's P_k by w_k(ρ_k + κ)/(1 + κ) and phase 1 as before.
   That is the main row: it closes the gap (and more) in both unreliable variants.
4. **It cost under skew.** κ = 0.02 was worse than off under style skew in 3/3 seeds and
   under label skew in 2/3: a silo whose honest data differ from the pooled public set agrees
   less with Δ_ref, and when every ρ is small (late rounds) their ratios are noisy, so the
   federation's mix swings from round to round. Larger κ (0.1, 0.3) did not remove the cost.
   Smoothing each silo's ρ over rounds with its own last ρ (private state; `rho_smoothing`)
   keeps the corrupted silos' persistently lower agreement and damps the round-to-round swings.
5. Other references: "contrast" (the clean update minus the update on the same images with
   shuffled captions: what the true pairing teaches beyond caption language) separates the
   corrupted silos more sharply in full space, costs the coordinator two local rounds per round.

Costs of the reference: the coordinator trains one local round per round on its public set
(two for "contrast") and broadcasts Δ_ref (the size of the factored matrices, downlink only);
the uplink payload is that of `blend` (r·n + 1 more numbers per matrix).
"""


def _nll(runs: dict[int, dict[str, dict]], label: str) -> dict[int, float]:
    """seed -> the row's held-out NLL, for the seeds it ran."""
    return {s: rows[label]["nll"] for s, rows in runs.items() if label in rows}


def render(run_lines: list[dict], _runs: Path, out: Path) -> None:
    """results/reliability.md and results/reliability_rho.png from the run lines."""
    data = _by_variant(run_lines)
    main = next(r for r in ROWS if r.group == "main").label
    off = "Fed-CMP reliability off"
    oracle = "Fed-CMP oracle (unreliable silos dropped)"
    baselines = [r.label for r in ROWS if r.group == "baseline"]
    lines = ["# Fed-CMP reliability against the coordinator's public reference (issue #15)", "",
             "Generated by `fedalign-lab experiment table reliability` from `results/reliability_runs/` "
             "(made by `fedalign-lab experiment run reliability`). Setup: results Setup (5 silos, 10 rounds, 96 samples "
             "per silo per round, AdamW lr 3e-3, batch 16, 200 held-out samples), Fed-CMP r = 16 with error "
             "feedback and OPM β = 0.5, plain sums (simulation). The coordinator's public set: 300 clean "
             "samples from the pooled distribution (its own random stream), 96 per reference update. "
             "Rows marked * are read from `results/fedcmp_runs/` (world `world-b085ae92870d25383018`, whose "
             "model files are byte-identical to this code's `world-f015035034d9fc8210e1`; rerunning \"Fed-CMP "
             "reliability off\" on unreliable seed 0 here gave 0.49013423919677734, the committed value to the "
             "last digit). The ablation rows vary the unsmoothed κ = 0.02 row, which came first.", "",
             f"Main row: **{main}**. Gap closed = (NLL off − NLL main) / (NLL off − NLL oracle).", ""]
    verdicts = []
    for variant in VARIANTS:
        seeds = sorted(data.get(variant, {}))
        if not seeds:
            continue
        runs = data[variant]
        labels = [r.label for r in ROWS if variant in r.variants]
        lines += [f"## {variant}", "", "| row | seeds | held-out NLL | MC accuracy | paired ΔNLL vs off | better than off |",
                  "|---|---:|---:|---:|---:|---:|"]
        for lab in labels:
            have = [s for s in seeds if lab in runs[s]]
            if not have:
                continue
            nll = [runs[s][lab]["nll"] for s in have]
            mc = [runs[s][lab].get("mc_accuracy", math.nan) for s in have]
            delta = [x - y for x, y in paired(_nll(runs, lab), _nll(runs, off))]
            star = "*" if any(runs[s][lab].get("from") for s in have) else ""
            better = sum(p < 0 for p in delta)
            lines.append(f"| {lab}{star} | {len(have)} | {fmt_ms(nll)} | {fmt_ms(mc)} | "
                         f"{fmt_ms(delta) if lab != off else '–'} | {f'{better}/{len(delta)}' if lab != off else '–'} |")
        lines.append("")
        both = [s for s in seeds if main in runs[s] and off in runs[s]]
        base_means = {b: statistics.fmean([runs[s][b]["nll"] for s in seeds if b in runs[s]])
                      for b in baselines if any(b in runs[s] for s in seeds)}
        strongest = min(base_means, key=base_means.get) if base_means else None
        if strongest and both:
            d = [runs[s][main]["nll"] - runs[s][strongest]["nll"] for s in both if strongest in runs[s]]
            wins = sum(x < 0 for x in d)
            lines.append(f"Against the strongest baseline ({strongest}): paired ΔNLL {fmt_ms(d)}, better in "
                         f"{wins}/{len(d)} seeds.")
        else:
            wins, d = 0, []
        if variant in UNRELIABLE and both and all(oracle in runs[s] for s in both):
            gaps = [(runs[s][off]["nll"] - runs[s][main]["nll"]) / (runs[s][off]["nll"] - runs[s][oracle]["nll"])
                    for s in both]
            m_off = statistics.fmean(runs[s][off]["nll"] for s in both)
            m_main = statistics.fmean(runs[s][main]["nll"] for s in both)
            m_or = statistics.fmean(runs[s][oracle]["nll"] for s in both)
            closed = (m_off - m_main) / (m_off - m_or)
            ok = closed >= 0.5 and wins == len(both) == len(d)
            lines.append(f"Gap closed (means): ({m_off:.4f} − {m_main:.4f}) / ({m_off:.4f} − {m_or:.4f}) = "
                         f"{100 * closed:.0f}% (per seed: {', '.join(f'{100 * g:.0f}%' for g in gaps)}).")
            b_all, s_all, n_all, rb, rc = 0, 0, 0, [], []
            for s in both:
                b, st_, n, xb, xc = _rho_split(runs[s][main])
                b_all, s_all, n_all, rb, rc = b_all + b, s_all + st_, n_all + n, rb + xb, rc + xc
            lines.append(f"ρ ({main}): corrupted silos' mean ρ below the clean silos' in {b_all}/{n_all} "
                         f"rounds (max corrupted < min clean in {s_all}/{n_all}); mean ρ corrupted "
                         f"{statistics.fmean(rb):.3f}, clean {statistics.fmean(rc):.3f}.")
            verdicts.append(f"- {variant}: gap closed {100 * closed:.0f}% (need ≥ 50%), beats {strongest} in "
                            f"{wins}/{len(d)} seeds (need 3/3), ρ corrupted < clean in {b_all}/{n_all} rounds: "
                            f"**{'holds' if ok and b_all > n_all / 2 else 'fails'}**.")
        elif both:
            p = [runs[s][main]["nll"] - runs[s][off]["nll"] for s in both]
            sd = lambda lab: statistics.stdev([runs[s][lab]["nll"] for s in both]) if len(both) > 1 else 0.0
            spread = max(sd(off), sd(main))
            cost = statistics.fmean(p)
            worse = sum(x > 0 for x in p)
            verdicts.append(f"- {variant}: paired ΔNLL vs off {fmt_ms(p)}, worse in {worse}/{len(p)} seeds; the rows' "
                            f"seed std {spread:.4f}: **{'within' if cost <= spread else 'beyond'} the seed spread**"
                            f"{' (by the table tie rule; paired, it costs in every seed)' if cost <= spread and worse == len(p) else ''}.")
        lines.append("")
    # every reliability configuration against off, per variant: the trade-off in one table
    rel_rows = [r.label for r in ROWS if r.options.get("reliability", "off") != "off" and not r.true_rho]
    present = [v for v in VARIANTS if v in data]
    lines += ["## Every reliability row against reliability off (paired ΔNLL, mean ± std over seeds; better in k/n)",
              "", "| row | " + " | ".join(present) + " |", "|---|" + "---:|" * len(present)]
    for lab in rel_rows:
        cells = []
        for v in present:
            pairs = [x - y for x, y in paired(_nll(data[v], lab), _nll(data[v], off))]
            cells.append(f"{fmt_ms(pairs)} ({sum(x < 0 for x in pairs)}/{len(pairs)})" if pairs else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += ["", "## Must-show verdicts", ""] + verdicts + ["", f"![ρ per silo per round]({PNG})", "",
                                                            NOTES]
    (out / "reliability.md").write_text("\n".join(lines))
    _plot(data, main, out / PNG)


def _plot(data, main: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in UNRELIABLE if v in data]
    seeds = sorted({s for v in variants for s in data[v]})
    if not variants or not seeds:
        return
    fig, axes = plt.subplots(len(variants), len(seeds), figsize=(4 * len(seeds), 3.2 * len(variants)),
                             squeeze=False, sharey=True)
    for i, v in enumerate(variants):
        for j, s in enumerate(seeds):
            ax = axes[i][j]
            rec = data[v].get(s, {}).get(main)
            if rec is None:
                ax.set_axis_off()
                continue
            bad = set(str(k) for k in rec["unreliable"])
            silos = sorted(rec["rho_curve"][0]["rho"], key=int)
            for k in silos:
                xs = [r["round"] for r in rec["rho_curve"]]
                ys = [r["rho"][k] for r in rec["rho_curve"]]
                ax.plot(xs, ys, marker="o", ms=3, color="tab:red" if k in bad else "tab:blue",
                        ls="-" if k in bad else "--", label=f"silo {k}{' (corrupted)' if k in bad else ''}")
            ax.set_title(f"{v}, seed {s}", fontsize=9)
            ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel("ρ (each silo's own)")
            ax.legend(fontsize=6)
    fig.suptitle(f"{main}: ρ per silo per round (red: corrupted silos)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


FAMILY = Family("reliability", "Fed-CMP reliability against the coordinator's public reference (issue #15)",
                "reliability_runs", ("reliability.md", PNG), OPTIONS, _jobs, _pending, _build, _run, render)
