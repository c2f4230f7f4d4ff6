"""``make demo``: an aggregator and three silos as separate processes on 127.0.0.1.

Embedded world (its tiny frozen models are built and cached on the first run), secure
aggregation (SecAgg masking over ZeroMQ + CURVE) and DP (Opacus; the noise derived from each
silo's (ε, δ) budget for its planned schedule) on, a few rounds of Fed-CMP. The result is shown
beside the same frozen LM's no-image baseline.
It makes keys, writes the configs from the templates next to this file, starts the four
processes, and at the end prints a metrics table, each round's wire bytes per silo checked
against the Fed-CMP payload formula, and where the projector, curves and ledgers are.

    python examples/quickstart/run.py [--out runs/quickstart] [--rounds 4] [--shard-size 1024] [--world default|tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
from fedalign.host.process import apply_process_defaults  # noqa: E402

apply_process_defaults()

MARKER = ".fedalign-quickstart"
SILOS = ["hospital-a", "hospital-b", "hospital-c"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(msg: str) -> None:
    print(msg, flush=True)


def _fill(template: Path, **values) -> str:
    """The template with each ``{key}`` replaced (TOML's own braces are left alone)."""
    text = template.read_text()
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    return text


def prepare(out: Path, rounds: int, shard: int, world: str) -> dict:
    """Keys, roster, θ_0 and configs in ``out``; returns the paths the processes need."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from fedalign.aggregator.audit import keygen_aggregator
    from fedalign.silo.keys import keygen_silo
    from fedalign.silo.model import build_projector
    from fedalign.world import TINY_SPEC, WorldSpec
    from fedalign.world.build import build_world

    apply_process_defaults()
    t0 = time.time()
    say("building (or loading) the embedded world's frozen models ...")
    art = build_world(TINY_SPEC if world == "tiny" else WorldSpec())
    how = "built now" if art.built else "shipped with the package" if art.shipped else "from cache"
    say(f"  world ready in {time.time() - t0:.0f}s ({how}): {art.vision_path.parent}")

    keys = out / "keys"
    *_, aggregator_entry = keygen_aggregator(keys, "aggregator")  # CURVE pair + Ed25519 identity
    entries = [keygen_silo(keys, s).roster_entry for s in SILOS]
    (out / "roster.toml").write_text("# trusted keys (public only): exchanged out of band\n\n" + aggregator_entry
                                     + "\n" + "\n".join(entries))

    d_v = AutoConfig.from_pretrained(str(art.vision_path)).hidden_size
    d_m = AutoConfig.from_pretrained(str(art.lm_path)).hidden_size
    proj = build_projector("mlp2x_gelu", d_v, d_m, generator=torch.Generator().manual_seed(0))
    save_file({k: v.contiguous() for k, v in proj.state_dict().items()}, str(out / "init_projector.safetensors"))

    from fedalign.protocol.keys import load_public
    from fedalign.compliance.policy import key_fingerprint

    fp = key_fingerprint(load_public(keys / "aggregator.key"))
    (out / "policy.toml").write_text(_fill(HERE / "policy.toml", aggregator_fingerprint=fp))
    shutil.copy(HERE / "aggregator-policy.toml", out / "aggregator-policy.toml")
    port = free_port()
    peers = ", ".join(f'"{s}" = "{s}-out/state/ledger.jsonl"' for s in SILOS)
    (out / "aggregator.toml").write_text(_fill(HERE / "aggregator.toml", port=port, rounds=rounds, peer_ledgers=peers))
    for i, s in enumerate(SILOS):
        txt = _fill(HERE / "silo.toml", port=port, index=i, name=s, shard_size=shard, samples_per_silo=shard * rounds,
                    world=world)
        (out / f"{s}.toml").write_text(txt)
    return {"port": port, "d_vision": d_v, "d_model": d_m}


def launch(out: Path, timeout: float) -> None:
    """Start aggregator and silos; wait; on any failure stop everyone and show the log tails."""
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ)  # the installed fedalign package (pip install -e . or a wheel)
    cmds = {"aggregator": [sys.executable, "-m", "fedalign.aggregator.cli", "serve", "--config", "aggregator.toml", "--quiet"]}
    for s in SILOS:
        cmds[s] = [sys.executable, "-m", "fedalign.silo.cli", "train", "--config", f"{s}.toml"]
    procs: dict[str, subprocess.Popen] = {}
    files = []
    try:
        for name, cmd in cmds.items():
            f = open(logs / f"{name}.log", "w")
            files.append(f)
            procs[name] = subprocess.Popen(cmd, cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT)
        say(f"started aggregator + {len(SILOS)} silos (logs in {logs})")
        deadline = time.time() + timeout
        started, shown, last_note = time.time(), set(), time.time()
        while any(p.poll() is None for p in procs.values()):
            failed = {n: p.returncode for n, p in procs.items() if p.returncode not in (None, 0)}
            if failed or time.time() > deadline:
                raise RuntimeError(f"failed: {failed}" if failed else f"timed out after {timeout:.0f}s")
            last_note = progress(out / "aggregator-out" / "aggregator.jsonl", shown, started, last_note)
            time.sleep(0.5)
        failed = {n: p.returncode for n, p in procs.items() if p.returncode != 0}
        if failed:
            raise RuntimeError(f"failed: {failed}")
    except BaseException as e:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for name in procs:
            tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-8:]
            say(f"--- {name} (last lines) ---\n" + "\n".join(tail))
        raise SystemExit(f"quickstart failed: {e}") from None
    finally:
        for f in files:
            f.close()


def progress(events: Path, shown: set, started: float, last_note: float) -> float:
    """Print each round the aggregator starts and commits as its event log records it, and a line every
    15 s while nothing new happens (no silent wait); returns when the last line was printed."""
    from fedalign.compliance.eventlog import read_events

    now = time.time()
    for e in read_events(events):
        key = (e.get("event"), e.get("round"))
        if key in shown or key[0] not in ("round_started", "round_committed", "round_abandoned"):
            continue
        shown.add(key)
        if key[0] == "round_committed":
            say(f"  round {key[1]} committed: {len(e.get('survivors', []))} silos summed ({now - started:.0f}s)")
        elif key[0] == "round_abandoned":
            say(f"  round {key[1]} abandoned: {e.get('reason', '')} ({now - started:.0f}s)")
        else:
            say(f"  round {key[1]} started: the silos train under DP ({now - started:.0f}s)")
        last_note = now
    if now - last_note >= 15:
        doing = "still running" if shown else "the silos load the frozen models and join"
        say(f"  ... {doing} ({now - started:.0f}s)")
        last_note = now
    return last_note


def payload_formula_numbers(params: dict, rank: int, reliability: bool) -> int:
    """Numbers one silo uploads per Fed-CMP round: r(m+n) per matrix (+ r·n+1 with
    reliability), the small tensors, and its weight."""
    from fedalign.fedcmp.core import effective_rank, matrix_payload_numbers

    total = 1
    for v in params.values():
        if v.ndim == 2:
            m, n = v.shape
            total += matrix_payload_numbers(m, n, effective_rank(v.shape, rank), reliability)
        else:
            total += v.numel()
    return total


def report(out: Path, rounds: int, started: float) -> None:
    from rich.console import Console
    from rich.table import Table
    from safetensors.torch import load_file

    from fedalign.compliance.eventlog import read_events

    con = Console(width=132)
    agg = out / "aggregator-out"
    history = json.loads((agg / "history.json").read_text())
    final = load_file(str(agg / "final_projector.safetensors"))
    init = load_file(str(out / "init_projector.safetensors"))
    from fedalign.fedcmp.strategies import make_strategy
    from fedalign.protocol.config.aggregator import load_aggregator_config

    sec = load_aggregator_config(out / "aggregator.toml").strategy
    fc = make_strategy(sec.name, dp=sec.dp, **sec.options).config  # this run's (DP defaults included)
    formula = 4 * payload_formula_numbers(init, rank=fc.rank, reliability=fc.reliability != "off")  # uint32
    full = 4 * sum(v.numel() for v in init.values())
    # Fed-CMP's final round also sums each silo's error-feedback residual (m·n per matrix, once: the flush)
    flush = 4 * sum(v.numel() for v in init.values() if v.ndim == 2) if fc.flush and fc.error_feedback else 0

    train_loss: dict[int, list[float]] = {}
    for s in SILOS:
        for e in read_events(out / f"{s}-out" / f"{s}.jsonl"):
            if e["event"] == "training_done" and "train_loss" in e:
                train_loss.setdefault(e["round"], []).append(e["train_loss"])

    t = Table(title="Fed-CMP over secure aggregation, 3 silos, DP on")
    for col in ("round", "silos summed", "train loss", "mean ρ", "ε spent (max)", "payload B/silo", "formula B",
                "wire up B/silo", "sum s", "round s"):
        t.add_column(col, justify="right")
    ok = True
    for rec in history:
        pay = sorted(set(rec["payload_bytes"].values()))
        want = formula + (flush if rec["round"] == rounds - 1 else 0)
        ok &= pay == [want]
        up = list(rec["wire_up_bytes"].values())
        losses = train_loss.get(rec["round"], [])
        eps = max(rec["epsilon"].values()) if rec["epsilon"] else 0.0
        t.add_row(str(rec["round"]), str(len(rec["survivors"])),
                  f"{sum(losses) / len(losses):.3f}" if losses else "-",
                  f"{rec['metrics']['mean_reliability']:.2f}" if "mean_reliability" in rec.get("metrics", {}) else "-",
                  f"{eps:.2f}",
                  ",".join(f"{p:,}" for p in pay), f"{want:,}", f"{min(up):,}-{max(up):,}",
                  f"{rec['sum_seconds']:.2f}", f"{rec['seconds']:.1f}")
    con.print(t)

    e = Table(title="held-out evaluation on the world's clean test captions, by each silo: initial θ_0 -> final")
    e.add_column("silo")
    summaries = {s: json.loads((out / f"{s}-out" / "federated_summary.json").read_text()) for s in SILOS}
    keys = [k for k in ("heldout_nll", "mc_accuracy", "presence_accuracy", "presence_f1")
            if k in next(iter(summaries.values())).get("eval", {})]
    for k in keys + ["epsilon_spent"]:
        e.add_column(k, justify="right")

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    for s, summ in summaries.items():
        before, after = summ.get("eval_initial", {}), summ.get("eval", {})
        vals = [f"{fmt(before.get(k))} -> {fmt(after.get(k))}" for k in keys] + [fmt(summ.get("epsilon_spent"))]
        e.add_row(s, *vals)
    con.print(e)
    aligned = no_image_check(con, summaries)

    curves = out / "curves.png"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        rs = sorted(train_loss)
        ax[0].plot(rs, [sum(train_loss[r]) / len(train_loss[r]) for r in rs], marker="o")
        ax[0].set(xlabel="round", ylabel="mean local train loss", title="training")
        ax[1].plot([h["round"] for h in history], [max(h["epsilon"].values() or [0]) for h in history], marker="o")
        ax[1].set(xlabel="round", ylabel="ε spent (max over silos)", title="privacy")
        fig.tight_layout()
        fig.savefig(curves, dpi=110)
    except Exception as exc:  # noqa: BLE001 - curves are a convenience
        say(f"(curves not drawn: {exc})")

    drift = max(float((final[k] - init[k]).abs().max()) for k in final)
    say(f"\nwire bytes per silo per round: payload {formula:,} B = 4 B x Fed-CMP formula "
        f"(r(m+n) per matrix" + (", + r·n + 1 for reliability" if fc.reliability != "off" else "")
        + f" + biases + weight; full update would be {full:,} B, {full / formula:.1f}x more)"
        + (f"; the final round adds the flushed residuals, {flush:,} B" if flush else "") + ": "
        + ("MATCH" if ok else "MISMATCH"))
    say(f"the projector moved by up to {drift:.4f} per entry over {len(history)} rounds")
    say("\noutputs:")
    say(f"  global projector : {agg / 'final_projector.safetensors'}")
    say(f"  exported (LLaVA) : {out / 'hospital-a-out' / 'mm_projector.safetensors'} (each silo)")
    say(f"  curves           : {curves}")
    say(f"  ledgers          : {agg / 'ledger.jsonl'}, " + ", ".join(str(out / f'{s}-out' / 'state' / 'ledger.jsonl') for s in SILOS))
    say(f"  logs             : {agg / 'aggregator.jsonl'}, {out / 'logs'}")
    say(f"  audit            : cd {out} && silo audit report --config hospital-a.toml --html hospital-a-report.html"
        "  (docs/compliance.md)")
    say(f"total {time.time() - started:.0f}s")
    if not ok or len(history) != rounds:
        raise SystemExit("quickstart: the payload check or the round count failed")
    if not aligned:
        say("quickstart: the trained projector did not clear the no-image bar (see the table above)")


def no_image_check(con, summaries: dict) -> bool:
    """The trained projector against the same frozen LM with no image, on the same held-out set.

    Under DP a projector can end where the LM already is without the image; the quickstart's bar:
    held-out NLL >= 25% below the no-image NLL and multiple-choice accuracy >= 2x the no-image one."""
    from rich.table import Table

    ev = next(iter(summaries.values())).get("eval", {})  # every silo evaluates the same global θ
    nll, base = ev.get("heldout_nll"), ev.get("heldout_nll_no_image", ev.get("heldout_nll_text_only"))
    mc, mc0 = ev.get("mc_accuracy"), ev.get("mc_accuracy_no_image")
    if not isinstance(nll, float) or not isinstance(base, float):
        say("(no-image baseline not available)")
        return False
    t = Table(title="trained projector (DP + secure aggregation) vs the same frozen LM with no image")
    for col in ("metric", "no image", "trained projector", "change", "bar", "met"):
        t.add_column(col, justify="right")
    cut = 1.0 - nll / base
    ok_nll = cut >= 0.25
    t.add_row("held-out caption NLL", f"{base:.3f}", f"{nll:.3f}", f"{-100 * cut:+.1f}%", "<= -25%",
              "yes" if ok_nll else "NO")
    ok_mc = True
    if isinstance(mc, float) and isinstance(mc0, float):
        ok_mc = mc >= 2 * mc0
        t.add_row("multiple-choice accuracy", f"{mc0:.3f}", f"{mc:.3f}", f"{mc / max(mc0, 1e-9):.2f}x", ">= 2x",
                  "yes" if ok_mc else "NO")
    con.print(t)
    return ok_nll and ok_mc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="work dir (runs/ is git-ignored)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=1024, help="records per silo per round (DP needs thousands)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--world", choices=("default", "tiny"), default="default",
                    help="embedded world models: default, or tiny (builds in a fraction of the time)")
    args = ap.parse_args(argv)
    started = time.time()
    out = args.out.resolve()
    if out.exists():
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} exists and is not a quickstart directory; pass another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by examples/quickstart/run.py; deleted by its next run\n")
    prepare(out, args.rounds, args.shard_size, args.world)
    launch(out, args.timeout)
    report(out, args.rounds, started)


if __name__ == "__main__":
    main()
