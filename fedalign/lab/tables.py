"""The results tables: mean ± std over seeds, verdicts against the strongest baseline, paired
per-seed differences, the rank table and the payload table (no training here)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from fedalign.lab.experiments import (ABLATIONS, BASELINES, BEST_SILO, CONSENSUS, DP_CONFIGS, FEDCMP, ORACLE, RANKS,
                                      RANKS_LABEL_ONLY, REFERENCES, RUN_DEFAULT_RANK, SCENARIOS)

__all__ = ["write_tables", "payload_table", "METRICS"]


def _best_single_silo(local: dict) -> dict:
    """The local-only run's best silo as a row of its own (same seed, its own metrics)."""
    row = {k: v for k, v in local.items() if not k.startswith("best_silo") and k != "per_silo"}
    row.update({k[len("best_silo_"):]: v for k, v in local.items() if k.startswith("best_silo_")})
    return {**row, "label": BEST_SILO.label, "silo": local["best_silo"], "upload_bytes_per_silo_per_round": 0.0}


def _separates(groups: dict, sc: str) -> str:
    """Can the scenario tell methods apart? FedAvg must be worse than centralized and better
    than the best single silo alone, by more than the seed spread. Seeds are paired (same data
    and initialisation), and seeds differ in how hard their draw is, so the spread that counts
    is that of the per-seed difference; the spread of the two rows' NLL is printed beside it."""
    out = []
    for other, want in (("centralized", "worse"), (BEST_SILO.label, "better")):
        pairs = _paired_nll(groups, sc, False, "FedAvg", other)
        if len(pairs) < 2:
            out.append(f"vs {other}: fewer than 2 paired seeds")
            continue
        gaps = [(x - y) if want == "worse" else (y - x) for x, y in pairs]
        gap, sd, _ = _stats(gaps)
        rows_sd = max(_stats([x for x, _ in pairs])[1], _stats([y for _, y in pairs])[1])
        ok = gap > sd and all(g > 0 for g in gaps)
        out.append(f"FedAvg {want} than {other} by {gap:+.4f} ± {sd:.4f} NLL (per-seed gap, {len(pairs)} seeds, "
                   f"{'all' if all(g > 0 for g in gaps) else 'not all'} {want}; the rows' own spread "
                   f"{rows_sd:.4f}{'' if gap > rows_sd else ', larger than the gap'}): {'yes' if ok else '**NO**'}")
    return "Scenario check: " + "; ".join(out) + "."


def _rows(runs: Path) -> list[dict]:
    rows = []
    for p in sorted(runs.glob("*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return rows


def _stats(vals: list[float]) -> tuple[float, float, int]:
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


METRICS = [("nll", "held-out NLL ↓", 4), ("mc_accuracy", "MC acc ↑", 3), ("presence_f1", "presence F1 ↑", 3)]


def _fmt(m: float, s: float, d: int) -> str:
    return "–" if math.isnan(m) else f"{m:.{d}f} ± {s:.{d}f}"


def _verdict(ours: tuple, best: tuple) -> str:
    """NLL (lower is better): win / tie / lose against ``best`` by the larger seed spread."""
    (m1, s1, n1), (m2, s2, n2) = ours, best
    if math.isnan(m1) or math.isnan(m2):
        return "–"
    if min(n1, n2) < 2:
        return "undecided (one seed)"
    spread = max(s1, s2)
    if m1 < m2 - spread:
        return "wins"
    if m1 > m2 + spread:
        return "loses"
    return "ties"


def payload_table() -> str:
    """Upload per silo per round for LLaVA-1.5's projector (mlp2x_gelu, 1024→4096→4096), by rank."""
    import torch

    from fedalign.fedcmp.strategies import FedAvg, FedCMP, FedCMPConfig
    from fedalign.fedcmp.strategy import payload_numbers

    params = {"0.weight": torch.empty(4096, 1024, device="meta"), "0.bias": torch.empty(4096, device="meta"),
              "2.weight": torch.empty(4096, 4096, device="meta"), "2.bias": torch.empty(4096, device="meta")}
    full = payload_numbers(FedAvg(), params)
    lines = ["| strategy | numbers per silo per round | MiB (4 B each) | vs full update |", "|---|---:|---:|---:|",
             f"| FedAvg (full update) | {full:,} | {4 * full / 2**20:.2f} | 1× |"]
    for r in (8, 16, 32, 64):
        for rel in ("off", "blend"):
            n = payload_numbers(FedCMP(FedCMPConfig(rank=r, reliability=rel)), params)
            lines.append(f"| Fed-CMP r={r}{' + reliability' if rel == 'blend' else ''} | {n:,} | "
                         f"{4 * n / 2**20:.2f} | {full / n:.1f}× smaller |")
    return "\n".join(lines)


def write_tables(runs: Path, out: Path) -> None:
    """Write results/fedcmp_results.{md,csv} from the run lines."""
    rows = _rows(runs)
    rows += [_best_single_silo(r) for r in rows if r["label"] == "local-only" and "best_silo_nll" in r]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], bool(r.get("dp")), r["label"]), []).append(r)
    ranked = sorted(RANKS + RANKS_LABEL_ONLY, key=lambda c: c.options["rank"])
    order = {c.label: i for i, c in enumerate(BASELINES + [FEDCMP] + ABLATIONS + [CONSENSUS] + ranked + REFERENCES
                                              + [BEST_SILO] + ORACLE + DP_CONFIGS)}
    csv_rows = []
    for (sc, dp, label), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], SCENARIOS.index(kv[0][0]) if kv[0][0] in SCENARIOS else 9, order.get(kv[0][2], 99))):
        rec = {"scenario": sc, "dp": dp, "config": label, "group": rs[0]["group"], "seeds": len(rs)}
        for m, _, _ in METRICS + [("upload_bytes_per_silo_per_round", "", 0)]:
            mean, std, _ = _stats([r.get(m) for r in rs])
            rec[m + "_mean"], rec[m + "_std"] = mean, std
        rec["seconds_mean"] = _stats([r.get("seconds") for r in rs])[0]
        csv_rows.append(rec)
    out.mkdir(parents=True, exist_ok=True)
    if csv_rows:
        with (out / "fedcmp_results.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
            w.writeheader()
            w.writerows(csv_rows)
    md = [_markdown(csv_rows, groups), "", _rank_table(csv_rows), "", "## Payload for LLaVA-1.5's projector shapes", "", payload_table(), ""]
    (out / "fedcmp_results.md").write_text("\n".join(md))
    print(f"wrote {out / 'fedcmp_results.md'} and {out / 'fedcmp_results.csv'} ({len(rows)} runs)")


def _display(label: str) -> str:
    """Row names in the Markdown: say which rank the default rows had, and which is the default now."""
    now = __import__("fedalign.fedcmp.strategies", fromlist=["FedCMPConfig"]).FedCMPConfig().rank
    if label == "DP Fed-CMP (EF off, β=0)":
        return f"DP Fed-CMP r={RUN_DEFAULT_RANK} (EF off, β=0)"
    if label == FEDCMP.label:
        return f"Fed-CMP r={RUN_DEFAULT_RANK}" + (" (default)" if now == RUN_DEFAULT_RANK
                                                  else " (first default, docs/design.md §4)")
    if label == f"Fed-CMP r={now}":
        return f"Fed-CMP r={now} (default)"
    return label


def _paired_nll(groups: dict, sc: str, dp: bool, a: str, b: str) -> list[tuple[float, float]]:
    """(NLL of a, NLL of b) for every seed both rows ran (same data and initialisation), in seed order."""
    na = {r["seed"]: r.get("nll") for r in groups.get((sc, dp, a), [])}
    nb = {r["seed"]: r.get("nll") for r in groups.get((sc, dp, b), [])}
    return [(na[k], nb[k]) for k in sorted(na) if k in nb and na[k] is not None and nb[k] is not None]


def _paired(groups: dict, sc: str, dp: bool, a: str, b: str) -> str:
    """Per-seed NLL difference a − b: mean ± std, and a's wins."""
    pairs = _paired_nll(groups, sc, dp, a, b)
    if not pairs:
        return "no paired seeds"
    d = [x - y for x, y in pairs]
    m, sd, _ = _stats(d)
    return f"paired ΔNLL {m:+.4f} ± {sd:.4f}, lower in {sum(x < 0 for x in d)}/{len(d)} seeds"


def _rank_table(csv_rows: list[dict]) -> str:
    """Fed-CMP held-out NLL against rank r per scenario (no DP), with the upload it costs."""
    default_rank = RUN_DEFAULT_RANK
    cells: dict[tuple[str, int], dict] = {}
    for r in csv_rows:
        if r["dp"]:
            continue
        if r["config"] == FEDCMP.label:
            cells[(r["scenario"], default_rank)] = r
        elif r["group"] == "rank":
            cells[(r["scenario"], int(r["config"].split("r=")[1]))] = r
    ranks = sorted({k for _, k in cells})
    scen = [sc for sc in SCENARIOS if any((sc, k) in cells for k in ranks)]
    if not scen:
        return ""
    lines = ["## Fed-CMP quality against rank (held-out NLL, mean ± std over seeds)", "",
             "| Fed-CMP | upload B/silo/round | " + " | ".join(scen) + " |", "|---:|---:|" + "---:|" * len(scen)]
    for k in ranks:
        up = next((cells[(sc, k)]["upload_bytes_per_silo_per_round_mean"] for sc in scen if (sc, k) in cells), math.nan)
        row = [_fmt(cells[(sc, k)]["nll_mean"], cells[(sc, k)]["nll_std"], 4) if (sc, k) in cells else "–" for sc in scen]
        lines.append(f"| {_display(f'Fed-CMP r={k}') if k != default_rank else _display(FEDCMP.label)} | {up:,.0f} | "
                     + " | ".join(row) + " |")
    fedavg_up = next((r["upload_bytes_per_silo_per_round_mean"] for r in csv_rows if r["config"] == "FedAvg"), None)
    if fedavg_up:
        lines += ["", f"FedAvg uploads {fedavg_up:,.0f} B per silo per round."]
    return "\n".join(lines)


def _markdown(csv_rows: list[dict], groups: dict) -> str:
    lines = ["# Fed-CMP results (generated by `python scripts/results.py table`)", ""]
    raw = [r for rs in groups.values() for r in rs]
    worlds = sorted({str(r.get("world")) for r in raw})
    setups = {json.dumps(r.get("setup"), sort_keys=True) for r in raw if r.get("setup")}
    lines += [f"World: {', '.join(worlds)}. Setup: {'; '.join(sorted(setups)) or 'unknown'}.",
              "Sums: plain (insecure, simulation): secure aggregation gives the same sums up to fixed-point "
              "quantization (tests/lab/test_simulate.py checks it).",
              "Reading guide, verdicts and what was tried: results/fedcmp_notes.md. Made by "
              "`python scripts/results.py run --only core && python scripts/results.py run`.", ""]
    by_sc: dict[tuple, list[dict]] = {}
    for r in csv_rows:
        by_sc.setdefault((r["scenario"], r["dp"]), []).append(r)
    for (sc, dp), rs in by_sc.items():
        lines += [f"## {sc}{' (DP)' if dp else ''}", "",
                  "| config | seeds | " + " | ".join(h for _, h, _ in METRICS) + " | upload B/silo/round |",
                  "|---|---:|" + "---:|" * (len(METRICS) + 1)]
        for r in rs:
            cells = [_fmt(r[m + "_mean"], r[m + "_std"], d) for m, _, d in METRICS]
            up = r["upload_bytes_per_silo_per_round_mean"]
            lines.append(f"| {_display(r['config'])} | {r['seeds']} | " + " | ".join(cells) + f" | {'–' if math.isnan(up) else f'{up:,.0f}'} |")
        lines.append("")
        # verdict vs FedAvg and the strongest baseline (by mean NLL)
        stat = {r["config"]: (r["nll_mean"], r["nll_std"], r["seeds"]) for r in rs}
        base = [r for r in rs if r["group"] in ("baseline", "dp") and not r["config"].startswith("DP Fed-CMP")]
        ours_label = "DP Fed-CMP (EF off, β=0)" if dp else FEDCMP.label
        if base and ours_label in stat:
            most = max(r["seeds"] for r in base)  # compare like with like: baselines with every seed run
            best = min((r for r in base if r["seeds"] == most), key=lambda r: r["nll_mean"])
            favg = "DP FedAvg" if dp else "FedAvg"
            lines.append(f"{_display(ours_label)} vs strongest baseline ({best['config']}): **{_verdict(stat[ours_label], stat[best['config']])}** "
                         f"(NLL {stat[ours_label][0]:.4f} vs {best['nll_mean']:.4f}; {_paired(groups, sc, dp, ours_label, best['config'])}); "
                         f"vs {favg}: **{_verdict(stat[ours_label], stat.get(favg, (math.nan, 0, 0)))}** "
                         f"({_paired(groups, sc, dp, ours_label, favg)}).")
            lines.append("")
        if dp and "DP Fed-CMP r=16" in stat and base:
            lines += [f"DP Fed-CMP r=16 (the default under DP: EF off, β=0) vs strongest baseline ({best['config']}): "
                      f"**{_verdict(stat['DP Fed-CMP r=16'], stat[best['config']])}** "
                      f"(NLL {stat['DP Fed-CMP r=16'][0]:.4f} vs {best['nll_mean']:.4f}; "
                      f"{_paired(groups, sc, dp, 'DP Fed-CMP r=16', best['config'])}).", ""]
        if not dp and FEDCMP.label in stat:
            if "Fed-CMP r=16" in stat and base:
                lines += [f"{_display('Fed-CMP r=16')} vs strongest baseline ({best['config']}): "
                          f"**{_verdict(stat['Fed-CMP r=16'], stat[best['config']])}** "
                          f"({_paired(groups, sc, dp, 'Fed-CMP r=16', best['config'])}); vs FedAvg: "
                          f"**{_verdict(stat['Fed-CMP r=16'], stat.get('FedAvg', (math.nan, 0, 0)))}** "
                          f"({_paired(groups, sc, dp, 'Fed-CMP r=16', 'FedAvg')}).", ""]
            abl = [c.label for c in ABLATIONS + [CONSENSUS] if c.label in stat]
            if abl:
                lines.append(f"What each switch does at r={RUN_DEFAULT_RANK} (paired ΔNLL of the variant minus "
                             f"{_display(FEDCMP.label)}; negative = the variant is better):")
                lines += [f"- {lab}: {_paired(groups, sc, dp, lab, FEDCMP.label)}" for lab in abl]
                lines.append("")
        if not dp and "FedAvg" in stat:
            lines += [_separates(groups, sc), ""]
        if ORACLE[0].label in stat and "FedAvg" in stat:
            (mo, so, _), (mf, sf, _) = stat[ORACLE[0].label], stat["FedAvg"]
            lines += [f"Oracle (FedAvg without the unreliable silos) vs FedAvg: NLL {mo:.4f} vs {mf:.4f}, gain "
                      f"{mf - mo:.4f} against a seed spread of {max(so, sf):.4f}: "
                      f"{'the scenario can test reliability' if mf - mo > max(so, sf) else 'NOT a clear gain'}.", ""]
    return "\n".join(lines)
