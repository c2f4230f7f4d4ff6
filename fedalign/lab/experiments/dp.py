"""The "dp" family (issue #11): the privacy-utility table, scenarios × ε ∈ {1, 2, 4, 8, no DP} × seeds,
DP FedAvg, DP FedAvgM and DP Fed-CMP on the same data, each beside the frozen LM's no-image baseline; and
the free-form DP sweeps (recipe searches, probes) as the same family's configurations.

    fedalign-lab experiment run dp [--set scenarios=label,domain,style,unreliable] [--set seeds=0,1,2]
        [--set eps=1,2,4,8] [--set passes=16] [--set sampling=pooled] [--set no_dp_rows=false]
    fedalign-lab experiment run dp --set scenarios=label --set seeds=0 --set rounds=5 \
        --set config='{"name": "fedavg eps8", "strategy": "fedavg", "eps": 8, "batch_size": 512, "lr": 3e-3}'
    fedalign-lab experiment table dp     # results/dp_utility.{md,csv,png} from results/dp_runs/*.jsonl

A job is one (scenario, seed): the world problem (shards, tower features, held-out set, the no-image
baseline) is built once and every configuration trains from θ_0 on the same prepared shards; DP FedAvg /
FedAvgM / Fed-CMP and the non-DP reference differ only in what the configuration says. Its JSON lines land
in results/dp_runs/<scenario>-s<seed>.jsonl and a configuration already there (same data, same
configuration: it is identified by what it runs, not by its name) is skipped, so a killed run resumes.
The full grid is 4 scenarios × 3 seeds × (3 methods × 4 ε + the no-DP reference) = 156 trainings, about
17 CPU-hours at the recipe below on one core (6-8 min per DP run; about 1 min on an H100); ``eps``,
``seeds``, ``scenarios`` and ``methods`` cut it. ``config`` (one JSON object) or ``configs`` (a file of
one per line) runs those instead of the grid.

The DP recipe (measured in results/notes/dp_notes.md): 1024 samples per silo per round, Poisson batches
of 256 (q = 0.25) run as micro-batches of 128, 8 passes over each round's shard (32 steps), AdamW
lr 3e-3, clip 1, σ derived from (ε, δ = 1e-5) for that schedule. The no-DP reference is the
project's default recipe (batch 16, AdamW lr 2e-3, one pass) on the same data. Rows run at
another pass count (the 4-pass recipe of earlier sessions) are kept and marked "[4 passes]"; rows with
pooled sampling (every round Poisson-samples the silo's whole data, q = 256/5120, and ε composes the 5
rounds: results/notes/dp_notes.md, sixth session) are marked "[pooled, N passes]", N passes of a round's
worth (1024) of steps.

Configuration keys: name, strategy (simulator preset or fedcmp), eps (None = no DP), delta (1e-5),
clip, noise (expert σ; default derived from eps), batch_size, lr, optimizer, local_epochs,
physical_batch_size, subspace_rank (train W_t + U·C in a public basis, silo.subspace), subspace_basis
(cumulative | public: where that basis comes from), sampling (shards | pooled: a round trains on its own
shard, or Poisson-samples the silo's whole data), public_warm_start (E passes over the coordinator's public
set give θ_0), and for fedcmp: rank, server_lr, beta, error_feedback. A Fed-CMP row with error feedback
also carries the residual probe (:func:`residual_probe`).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from fedalign.lab.experiments.family import Family, ints
from fedalign.lab.tables import fmt_ms, load_runs, mean_std, paired, write_csv
from fedalign.protocol.errors import ConfigError

__all__ = ["DATA", "RECIPE", "NO_DP", "METHODS", "describe", "label", "grid", "run_config", "residual_probe",
           "FAMILY"]

DATA = dict(silos=5, rounds=5, samples_per_round=1024, test_size=300)
RECIPE = dict(batch_size=256, lr=3e-3, local_epochs=8, physical_batch_size=128, clip=1.0)
NO_DP = dict(batch_size=16, lr=2e-3)  # the project's default (non-DP) recipe: a row without these keys ran it
GRID_SEEDS, GRID_EPS, GRID_METHODS = (0, 1, 2), (1, 2, 4, 8), ("fedavg", "fedavgm", "fedcmp")  # the grid
# every (strategy, options) the table knows; the first Fed-CMP entry is Fed-CMP's DP default
METHODS = {"fedavg": ("fedavg", {}),
           "fedavgm": ("fedavgm-b0.5", {}),
           # Fed-CMP's DP defaults (FedCMPConfig.under_dp): error feedback on, OPM β = 0.5, reliability off
           "fedcmp": ("fedcmp", {"rank": 32, "reliability": "off", "error_feedback": True, "beta": 0.5}),
           # earlier DP defaults, pinned so their rows reproduce: EF off (the first design,
           # docs/design.md §4), then EF on with β = 0
           "fedcmp16": ("fedcmp", {"rank": 16, "reliability": "off", "error_feedback": False, "beta": 0.0}),
           "fedcmp32": ("fedcmp", {"rank": 32, "reliability": "off", "error_feedback": False, "beta": 0.0}),
           "fedcmp32ef": ("fedcmp", {"rank": 32, "reliability": "off", "error_feedback": True, "beta": 0.0}),
           # Fed-CMP's default reliability without DP (the coordinator's public reference, κ 0.02, ρ smoothed 0.7)
           "fedcmp32ref": ("fedcmp", {"rank": 32, "error_feedback": True, "beta": 0.0, "reliability": "reference",
                                      "kappa": 0.02, "rho_smoothing": 0.7})}


def describe(strategy: str, cfg: dict) -> str:
    """The row label of a DP configuration, from what it ran (a Fed-CMP row without ``error_feedback``
    or ``beta`` ran under the DP defaults of its day: error feedback off, β = 0)."""
    if strategy == "fedavg":
        return "DP FedAvg"
    if strategy.startswith("fedavgm-b"):
        return f"DP FedAvgM β={strategy.removeprefix('fedavgm-b')}"
    if strategy != "fedcmp":
        return f"DP {strategy}"
    out = f"DP Fed-CMP r={cfg.get('rank')}"
    if not cfg.get("error_feedback", False):
        out += " EF off"
    if cfg.get("beta"):
        out += f" OPM β={cfg['beta']:g}"
    if cfg.get("reliability", "off") != "off":
        out += f" rel={cfg['reliability']}"
    return out


def label(method: str) -> str:
    return describe(*METHODS[method])


REFERENCE = "no DP FedAvg"
SPREAD = 0.03  # held-out NLL between two DP runs of one configuration and seed (results/notes/dp_notes.md)


def grid(eps_list: list[float], methods: list[str], no_dp: bool = True, *, passes: int | None = None,
         sampling: str = "shards") -> list[dict]:
    """The run configurations; ``passes``/``sampling`` move the DP rows off the table's schedule."""
    if sampling not in ("shards", "pooled"):
        raise ConfigError(f"sampling: expected shards or pooled, got {sampling!r}")
    sched = {**RECIPE, **({"local_epochs": passes} if passes else {}),
             **({"sampling": sampling} if sampling != "shards" else {})}
    cfgs = []
    for m in methods:
        strat, extra = METHODS[m]
        name = label(m)
        if no_dp or m == "fedavg":  # the no-DP FedAvg reference is always run
            cfgs.append({"name": f"no {name}", "method": m, "strategy": strat, **extra, **NO_DP})
        for e in eps_list:
            cfgs.append({"name": f"{name} eps={e:g}{_schedule_tag(sched)}", "method": m, "strategy": strat,
                         "eps": e, **extra, **sched})
    return cfgs


OPTIONS = {"scenarios": "label,domain,style,unreliable", "seeds": ",".join(map(str, GRID_SEEDS)),
           "eps": ",".join(map(str, GRID_EPS)), "methods": ",".join(GRID_METHODS), "no_dp_rows": True,
           "passes": 0, "sampling": "shards", "config": "", "configs": "", **DATA, "device": "cpu",
           "world": "default"}


def _jobs(o: dict) -> list[tuple[str, int]]:
    _configs(o)  # a bad grid or configuration is refused before anything runs
    return [(sc, s) for sc in o["scenarios"].split(",") if sc for s in ints(o["seeds"])]


def _configs(o: dict) -> list[dict]:
    """The free-form configurations if ``config``/``configs`` name any, else the grid."""
    try:
        cfgs = [json.loads(o["config"])] if o["config"] else []
        if o["configs"]:
            text = Path(o["configs"]).read_text()
            cfgs += [json.loads(x) for x in text.splitlines() if x.strip() and not x.startswith("#")]
    except (OSError, ValueError) as e:
        raise ConfigError(f"config/configs: {e}") from None
    if any(not isinstance(c, dict) or "name" not in c or "strategy" not in c for c in cfgs):
        raise ConfigError("config: each configuration is a JSON object with at least name and strategy")
    if cfgs:
        return cfgs
    methods = [m for m in o["methods"].split(",") if m]
    if unknown := [m for m in methods if m not in METHODS]:
        raise ConfigError(f"methods: unknown {unknown}; expected some of {list(METHODS)}")
    return grid([float(e) for e in str(o["eps"]).split(",") if e], methods, o["no_dp_rows"],
                passes=o["passes"] or None, sampling=o["sampling"])


def _data(scenario: str, seed: int, o: dict) -> dict:
    return dict(scenario=scenario, seed=seed, silos=o["silos"], rounds=o["rounds"],
                samples_per_round=o["samples_per_round"], test_size=o["test_size"])


def _what(cfg: dict) -> dict:
    """What a configuration runs (its labels aside)."""
    return {k: v for k, v in cfg.items() if k not in ("name", "method")}


def _pending(scenario: str, seed: int, o: dict, lines: list[dict]) -> dict[str, dict]:
    """A configuration is done when a line has the same data and the same configuration."""
    data = _data(scenario, seed, o)
    done = [_what(ln["config"]) for ln in lines if ln.get("data") == data]
    return {c["name"]: c for c in _configs(o) if _what(c) not in done}


def _build(scenario: str, seed: int, o: dict):
    """The (scenario, seed) problem and its no-image baseline, shared by every configuration."""
    from fedalign.lab.scenarios import ProblemOptions, build_problem

    opts = ProblemOptions(n_silos=o["silos"], rounds=o["rounds"], seed=seed, samples_per_round=o["samples_per_round"],
                          extra={"test_size": o["test_size"], "device": o["device"], "world": o["world"]})
    fed = build_problem(scenario, opts)
    return fed, fed.no_image()


def _run(problem, cfg: dict, scenario: str, seed: int, o: dict) -> dict:
    fed, base = problem()
    r = run_config(fed, cfg, o["rounds"], seed)
    r.update(data=_data(scenario, seed, o), **base)
    r["nll_cut"] = base["nll_no_image"] - r["nll"]
    return r


TRAIN_KEYS = ("batch_size", "lr", "optimizer", "local_epochs", "physical_batch_size", "subspace_rank",
              "subspace_basis", "sampling", "public_warm_start")
FEDCMP_KEYS = ("rank", "server_lr", "beta", "error_feedback", "reliability", "kappa", "rho_smoothing")


def run_config(fed, cfg: dict, rounds: int, seed: int) -> dict:
    from fedalign.lab.choices import build_strategy
    from fedalign.lab.runner import simulate_problem

    eps = cfg.get("eps")
    dp = None if eps is None else dict(noise_multiplier=cfg.get("noise"), max_grad_norm=cfg.get("clip", 1.0),
                                       epsilon=float(eps), delta=cfg.get("delta", 1e-5))
    train = {k: cfg[k] for k in TRAIN_KEYS if k in cfg}
    from fedalign.lab.world import DEFAULTS

    base = {k: DEFAULTS[k] for k in TRAIN_KEYS if k in DEFAULTS}  # every run starts from the defaults
    fed.configure(dp=dp, **{**base, **train})
    fc = {k: cfg[k] for k in FEDCMP_KEYS if k in cfg} if cfg["strategy"] == "fedcmp" else {}
    strat = build_strategy(cfg["strategy"], dp=dp is not None, seed=seed, **fc)
    t0 = time.perf_counter()
    res = simulate_problem(fed, strat, rounds, eval_every=rounds)
    secs = time.perf_counter() - t0
    out = {"name": cfg["name"], "config": cfg, "nll": res.final["nll"], "mc_accuracy": res.final.get("mc_accuracy"),
           "seconds": secs, "train_seconds": sum(r.get("seconds_train_aggregate", 0.0) for r in res.records),
           "round_seconds": [r.get("seconds_train_aggregate") for r in res.records[1:]],
           "train_loss_last": res.records[-1].get("train_loss"),
           **{k: res.final[k] for k in ("nll_rare", "nll_common") if k in res.final},
           "nll_start": res.records[0].get("nll")}  # θ_0's (the public warm start's, if any)
    out.update(residual_probe(fed, res))
    if getattr(fed, "rare", ()):
        out["rare"] = list(fed.rare)
    if fed.dp_plan is not None:
        p = fed.dp_plan
        out.update(sigma=p.noise_multiplier, q=p.sample_rate, steps=p.steps, epsilon=p.epsilon)
    return out


def residual_probe(fed, res) -> dict:
    """Fed-CMP with error feedback: what its silos' residuals still hold after the last round, and the
    held-out scores had each silo's residual been applied then (θ_T + Σ w_k e_k / Σ w_k; a diagnostic of
    the lab's view, not something the protocol sends). ``residual_share`` = ‖that step‖ / ‖θ_T − θ_0‖."""
    from fedalign.fedcmp.core import E, key

    states, w = res.silo_states, res.last_weights
    names = [n for n in res.params if states and key(n, E) in states[0]]
    if not names:
        return {}
    theta0 = fed.init_params()
    flush = {n: sum(wk * s[key(n, E)] for wk, s in zip(w, states)) / sum(w) for n in names}
    moved = sum(float((res.params[n] - theta0[n]).norm() ** 2) for n in names) ** 0.5
    ev = fed.evaluate({**res.params, **{n: res.params[n] + flush[n] for n in names}})
    return {"nll_flushed": ev["nll"], "mc_accuracy_flushed": ev.get("mc_accuracy"),
            "residual_share": sum(float(f.norm() ** 2) for f in flush.values()) ** 0.5 / moved,
            "residual_norms": [sum(float(s[key(n, E)].norm() ** 2) for n in names) ** 0.5 for s in states]}


def _what(cfg: dict) -> dict:
    """What a configuration runs (its labels aside)."""
    return {k: v for k, v in cfg.items() if k not in ("name", "method")}


def _table_rows(lines: list[dict]) -> list[dict]:
    """The grid's runs (the table's data, the no-DP reference and the DP recipe), named by what they ran."""
    rows = []
    for r in lines:
        d = r.get("data", {})
        cfg = r["config"]
        if not all(d.get(k) == v for k, v in DATA.items()):
            continue
        if cfg.get("public_warm_start"):
            continue  # another start (results/notes/dp_notes.md), not the table's
        if cfg.get("eps") is None:  # the no-DP reference: FedAvg at the project's default recipe
            if cfg["strategy"] != "fedavg" or any(cfg.get(k, v) != v for k, v in NO_DP.items()) \
                    or cfg.get("local_epochs", 1) != 1:
                continue
            r["name"] = REFERENCE
        else:  # DP rows at the table's recipe (other pass counts marked); recipe-search runs stay out
            if any(cfg.get(k) != v for k, v in RECIPE.items() if k != "local_epochs") \
                    or cfg.get("delta", 1e-5) != 1e-5 or cfg.get("noise") or cfg.get("subspace_rank"):
                continue
            r["name"] = f"{describe(cfg['strategy'], cfg)} eps={cfg['eps']:g}" + _schedule_tag(cfg)
        rows.append(r)
    return rows


def _schedule_tag(cfg: dict) -> str:
    """The name's tag for a DP row off the table's schedule: " [16 passes]", " [pooled, 8 passes]";
    "" on it."""
    passes = cfg.get("local_epochs", 1)
    if cfg.get("sampling") == "pooled":
        return f" [pooled, {passes} passes]"
    return f" [{passes} passes]" if passes != RECIPE["local_epochs"] else ""


def _bar_check(sc: str, eps: float, bar: float, by: dict, ref: dict) -> str:
    """The must-show at one ε: one DP configuration (method, sampling and pass count) whose cut reaches ``bar`` of
    no-DP FedAvg's on every seed; the configuration with the best worst seed is named."""
    tag = f" eps={eps:g}"
    cands = []  # (seeds run, worst ratio, name, per-seed ratios, worst margin)
    for (sc_, name), runs in by.items():
        _, found, rest = name.partition(tag)
        if sc_ != sc or not found or name == REFERENCE or (rest and not rest.startswith(" [")):
            continue
        ratios = {s: r["nll_cut"] / ref[s]["nll_cut"] for s, r in runs.items() if s in ref and ref[s]["nll_cut"] > 0}
        # NLL by which each seed clears (> 0) or misses (< 0) the bar
        margins = {s: r["nll_cut"] - bar * ref[s]["nll_cut"] for s, r in runs.items() if s in ratios}
        if ratios:
            cands.append((min(len(ratios), 3), min(ratios.values()), name, ratios, min(margins.values())))
    if not cands:
        return f"{sc}, ε={eps:g}: no DP run"
    n, worst, name, ratios, margin = max(cands, key=lambda c: (c[0], c[1]))
    detail = " / ".join(f"{100 * ratios[s]:.0f}%" for s in sorted(ratios))
    verdict = ("**not met**" if worst < bar else "**met**" if n >= 3
               else f"met on the {n} seed(s) run, **not established** (3 needed)")
    if abs(margin) < SPREAD:
        verdict += (f" (the worst seed is {abs(margin):.3f} NLL {'above' if margin >= 0 else 'below'} the bar, "
                    f"inside the {SPREAD} spread between runs of one configuration: not robust)")
    return (f"{sc}, ε={eps:g}: best DP configuration by its worst seed, {name}, reaches {detail} of no-DP "
            f"FedAvg's cut on seeds {', '.join(map(str, sorted(ratios)))} (bar {100 * bar:.0f}% on every seed): {verdict}")


def _coverage(by: dict) -> list[str]:
    """What of the table's grid (the no-DP reference and every method at every ε, on the table's own
    schedule, over 3 seeds) has run, and the seeds each missing cell still needs."""
    cells = [c["name"] for c in grid(list(GRID_EPS), list(GRID_METHODS), no_dp=False)]
    done, lines = 0, []
    for sc in ("label", "domain", "style", "unreliable"):
        missing = []
        for name in cells:
            have = by.get((sc, name), {})
            done += sum(s in have for s in GRID_SEEDS)
            lack = [s for s in GRID_SEEDS if s not in have]
            if lack:
                missing.append(f"{name} (seed{'s' * (len(lack) > 1)} {', '.join(map(str, lack))})")
        lines.append(f"{sc}: " + ("complete" if not missing else "missing " + "; ".join(missing)))
    total = 4 * len(GRID_SEEDS) * len(cells)
    head = (f"{done} of {total} cells have run at the table's schedule (8 passes over each round's shard). "
            "`fedalign-lab experiment run dp --set no_dp_rows=false` runs only the missing ones (it skips what "
            "is logged).")
    return [head, ""] + [f"- {x}" for x in lines]


def _fedcmp_verdict(cells: list[tuple[str, str]]) -> str | None:
    """The issue's Fed-CMP must-show in one line, from the paired (scenario, verdict) of each (scenario, ε)
    cell: DP Fed-CMP at least ties DP FedAvg in every cell and beats it in at least two scenarios."""
    if not cells:
        return None
    lost = sum(v == "loses to" for _, v in cells)
    won = {sc for sc, v in cells if v == "beats"}
    met = lost == 0 and len(won) >= 2
    return (f"DP Fed-CMP at least ties DP FedAvg in every (scenario, ε) and beats it in two scenarios: "
            f"{'**met**' if met else '**not met**'} (loses in {lost} of {len(cells)} cells, beats in "
            f"{len(won)} scenario(s)); what was tried: results/notes/dp_notes.md")


def _residual_section(by: dict, runs: Path) -> list[str]:
    """Fed-CMP reruns with the residual probe (results/dp_runs/residual/, :func:`residual_probe`) beside the
    grid's DP FedAvg and Fed-CMP rows of the same scenario, seed and ε."""
    probes = [r for r in load_runs(runs / "residual") if "nll_flushed" in r]
    if not probes:
        return []
    out = ["## Fed-CMP's error-feedback residual after the last round", "",
           "Reruns of a grid cell's Fed-CMP configuration (results/dp_runs/residual/). 'applied': held-out NLL of "
           "θ_T + Σ w_k e_k / Σ w_k, had each silo's last residual been sent through the sum after round "
           f"{DATA['rounds']} (the protocol does not send it); share = ‖that step‖ / ‖θ_T − θ_0‖.", "",
           "| scenario | seed | ε | DP FedAvg (grid) | Fed-CMP (grid) | Fed-CMP (rerun) | rerun, residual applied | "
           "gain | share |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(probes, key=lambda r: (r["data"]["scenario"], r["data"]["seed"], r["config"]["eps"])):
        sc, s, eps = r["data"]["scenario"], r["data"]["seed"], r["config"]["eps"]
        grid_nll = [by.get((sc, f"{label(m)} eps={eps:g}"), {}).get(s, {}).get("nll") for m in ("fedavg", "fedcmp")]
        cells = [f"{x:.4f}" if x is not None else "-" for x in grid_nll]
        out.append(f"| {sc} | {s} | {eps:g} | {cells[0]} | {cells[1]} | {r['nll']:.4f} | {r['nll_flushed']:.4f} | "
                   f"{r['nll'] - r['nll_flushed']:+.4f} | {r['residual_share']:.2f} |")
    return out + [""]


def render(lines: list[dict], runs_dir: Path, out: Path) -> None:
    """results/dp_utility.{md,csv,png} and the must-show checks."""
    rows = _table_rows(lines)
    by: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        by.setdefault((r["data"]["scenario"], r["name"]), {})[r["data"]["seed"]] = r
    scenarios = [s for s in ("label", "domain", "style", "unreliable") if any(k[0] == s for k in by)]
    md = ["# Privacy-utility table (generated by `fedalign-lab experiment table dp`)", "",
          f"Data: {json.dumps(DATA)} per scenario and seed. DP recipe: {json.dumps(RECIPE)}, δ = 1e-5 per silo, "
          "σ derived from ε for the schedule (Opacus RDP; checked against dp_accounting in tests). "
          f"No-DP rows: {json.dumps(NO_DP)}. cut = no-image NLL − NLL; cut ratio = cut / cut of "
          f"'{REFERENCE}' on the same seed (paired). Runs: results/dp_runs/; notes: results/notes/dp_notes.md.", ""]
    out_csv = []
    checks = []
    fedcmp_cells: list[tuple[str, str]] = []  # (scenario, paired verdict) of Fed-CMP against DP FedAvg
    for sc in scenarios:
        ref = by.get((sc, REFERENCE), {})
        names = sorted({k[1] for k in by if k[0] == sc}, key=_order)
        md += [f"## {sc}", "", "| config | seeds | held-out NLL ↓ | NLL cut vs no image ↑ | cut / no-DP FedAvg cut | "
               "MC acc ↑ | no-image NLL | no-image MC | σ |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in names:
            runs = by[(sc, name)]
            seeds = sorted(runs)
            ratio = [runs[s]["nll_cut"] / ref[s]["nll_cut"] for s in seeds if s in ref and ref[s]["nll_cut"] > 0]
            sig = [runs[s]["sigma"] for s in seeds if runs[s].get("sigma")]
            md.append(f"| {name} | {len(seeds)} | {fmt_ms([runs[s]['nll'] for s in seeds], empty='-')} | "
                      f"{fmt_ms([runs[s]['nll_cut'] for s in seeds], empty='-')} | "
                      + (f"{100 * statistics.fmean(ratio):.0f}% (min {100 * min(ratio):.0f}%)" if ratio else "-")
                      + f" | {fmt_ms([runs[s]['mc_accuracy'] for s in seeds], empty='-')} | "
                      f"{statistics.fmean(runs[s]['nll_no_image'] for s in seeds):.4f} | "
                      f"{statistics.fmean(runs[s]['mc_accuracy_no_image'] for s in seeds):.3f} | "
                      + (f"{statistics.fmean(sig):.3g}" if sig else "-") + " |")
            for s in seeds:
                r = runs[s]
                out_csv.append({"scenario": sc, "config": name, "seed": s, "nll": r["nll"], "nll_cut": r["nll_cut"],
                                "mc_accuracy": r["mc_accuracy"], "nll_no_image": r["nll_no_image"],
                                "mc_accuracy_no_image": r["mc_accuracy_no_image"], "sigma": r.get("sigma"),
                                "epsilon": r.get("epsilon"), "seconds": r.get("seconds")})
        md.append("")
        for eps, bar in ((8, 0.75), (2, 0.5)):
            checks.append(_bar_check(sc, eps, bar, by, ref))
        for eps in GRID_EPS:
            for m in ("fedcmp", "fedavgm"):  # the must-show (Fed-CMP), and the momentum baseline beside it
                a = by.get((sc, f"{label(m)} eps={eps:g}"), {})
                b = by.get((sc, f"DP FedAvg eps={eps:g}"), {})
                d = [x - y for x, y in paired(*({s: r["nll"] for s, r in rows.items()} for rows in (a, b)))]
                if d:
                    mean, sd, _ = mean_std(d)
                    verdict = ("one seed: no verdict" if len(d) < 2 else "beats" if mean < -sd
                               else "loses to" if mean > sd else "ties")
                    checks.append(f"{sc}, ε={eps}: {label(m)} vs DP FedAvg paired ΔNLL {mean:+.4f} "
                                  f"± {sd:.4f} over {len(d)} seed(s), lower in {sum(x < 0 for x in d)}: {verdict}")
                    if m == "fedcmp" and len(d) > 1:
                        fedcmp_cells.append((sc, verdict))
    verdict = _fedcmp_verdict(fedcmp_cells)
    if verdict:
        checks.insert(0, verdict)
    md += ["## Must-show checks", ""] + [f"- {c}" for c in checks] + [""]
    md += ["## Grid coverage", ""] + _coverage(by) + [""]
    md += _residual_section(by, runs_dir)
    (out / "dp_utility.md").write_text("\n".join(md))
    write_csv(out / "dp_utility.csv", out_csv)
    _plot(by, scenarios, out / "dp_utility.png")


def _order(name: str) -> tuple:
    if name.startswith("no DP"):
        return (0, name, 0.0)
    head, _, e = name.rpartition(" eps=")
    try:
        return (1, head, -float(e))
    except ValueError:
        return (2, name, 0.0)


def _plot(by, scenarios, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not scenarios:
        return
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios) + 2.6, 3.4), squeeze=False)
    for ax, sc in zip(axes[0], scenarios):
        # the table's schedule per method (solid), and each method's pooled-sampling schedules (dashed)
        tags = sorted({n.partition(" eps=")[2].partition(" ")[2] for s_, n in by if s_ == sc and "[pooled" in n})
        for m, tag in [(m, "") for m in METHODS] + [(m, t) for t in tags for m in METHODS]:
            full, part = [], []  # (ε, mean cut): over 3 seeds (joined by a line) or fewer (hollow, alone)
            for e in GRID_EPS:
                runs = by.get((sc, f"{label(m)} eps={e:g}" + (f" {tag}" if tag else "")), {})
                if runs:
                    (full if len(runs) >= 3 else part).append((e, statistics.fmean(r["nll_cut"] for r in runs.values())))
            if full or part:
                line, = ax.plot(*(zip(*full) if full else ([], [])), marker="o", ls="--" if tag else "-",
                                color=f"C{list(METHODS).index(m)}", label=f"{label(m)} {tag}".strip())
                if part:
                    ax.plot(*zip(*part), ls="none", marker="o", mfc="none", color=line.get_color())
        ref = by.get((sc, REFERENCE), {})
        if ref:
            ax.axhline(statistics.fmean(r["nll_cut"] for r in ref.values()), color="k", ls="--", label=REFERENCE)
        ax.set(xscale="log", xlabel="ε (δ = 1e-5, per silo)", ylabel="held-out NLL cut vs no image", title=sc)
        ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        ax.minorticks_off()
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=7,
               title="hollow: fewer than 3 seeds", title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(png, dpi=110)



FAMILY = Family("dp", "privacy-utility grid (issue #11) and free-form DP sweeps", "dp_runs",
                ("dp_utility.md", "dp_utility.csv", "dp_utility.png"), OPTIONS, _jobs, _pending, _build, _run, render)
