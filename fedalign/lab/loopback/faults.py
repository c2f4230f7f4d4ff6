"""Fault injection over real processes on loopback: the harness behind tests/e2e/test_faults.py and
benchmarks/bench_faults.py.

- :func:`aggregator_kills`: `aggregator serve` (:mod:`.fault_aggregator`) SIGKILLs itself at
  a given step of a round, is restarted, next step, ...; toy silos (real runtime, ZeroMQ + CURVE,
  SecAgg) run throughout. After every kill the checkpoint must load (tensors bound to
  ``state.json``), the round ledger must verify, and no committed round may be lost; at the end the
  ledger's ``round_committed`` rounds must equal the checkpoint history (0..R-1, once each) and the
  final parameters must equal an uninterrupted run's (the in-process simulator over the same shards,
  or a process run without kills).
- :func:`silo_kills`: silos (:mod:`.fault_silo`) SIGKILL themselves at one step of one secure
  sum (one silo: a dropout, the sum completes over the survivors; two at once out of four with
  threshold 3: the round is abandoned and retried) and are restarted; every round is then
  replayed from the contributions the silos fed in and the sets the aggregator reported, and must
  give the aggregator's parameters.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from fedalign.lab.loopback.fault_aggregator import KILL_POINTS, SUM_TYPES

from fedalign.aggregator.checkpoint import CheckpointStore
from fedalign.fedcmp.phases import PhaseSum, run_phases, sums_from_arrays
from fedalign.fedcmp.strategies import make_strategy
from fedalign.lab.engine import init_state, run_round
from fedalign.lab.runner import attach_reference
from fedalign.lab.sums import plain_sum_insecure
from fedalign.protocol.errors import CheckpointError
from fedalign.compliance.eventlog import read_events
from fedalign.compliance.entries import LedgerError, read_ledger
from fedalign.compliance.verifier import verify

from fedalign.lab.loopback.federation import SHARD, LoopbackProcesses

__all__ = ["KILL_POINTS", "SUM_TYPES", "LoopbackFederation", "aggregator_kills", "silo_kills", "simulator_params"]



class LoopbackFederation(LoopbackProcesses):
    """Keys, roster and configs in ``root``; starts the fault processes and always cleans them up."""

    def __init__(self, root: Path, n_silos: int, rounds: int, strategy: str, options: dict, *,
                 step_deadline_s: float = 2.0, heartbeat_timeout_s: float = 5.0, max_failed_rounds: int = 3) -> None:
        super().__init__(root, n_silos, rounds, strategy, options, train_deadline_s=30, step_deadline_s=step_deadline_s,
                         heartbeat_timeout_s=heartbeat_timeout_s, aggregator_timeout_s=90,
                         max_failed_rounds=max_failed_rounds)

    @property
    def agg_dir(self) -> Path:
        return self.root / "agg"

    def aggregator(self, kill_at: str | None = None) -> subprocess.Popen:
        return self.start([sys.executable, "-m", "fedalign.lab.loopback.fault_aggregator", "--kill-at", kill_at or "none",
                           "serve", "--config", "aggregator.toml", "--quiet"], "aggregator.log")

    def trigger(self, i: int) -> Path:
        return self.root / f"{self.names[i]}.trigger"

    def silo(self, i: int) -> subprocess.Popen:
        return self.start([sys.executable, "-m", "fedalign.lab.loopback.fault_silo", "--config", f"{self.names[i]}.toml",
                           "--index", str(i), "--n-silos", str(self.n), "--trigger", str(self.trigger(i))],
                          f"{self.names[i]}.log")

    def events(self) -> list[dict]:
        p = self.agg_dir / "aggregator.jsonl"
        return read_events(p) if p.exists() else []

    def final_params(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.agg_dir / "final_projector.safetensors"))


def integrity(fed: LoopbackFederation) -> dict[str, Any]:
    """What is on disk now: does the checkpoint load, does the ledger verify, which rounds each holds."""
    out: dict[str, Any] = {"checkpoint_ok": True, "ledger_ok": True, "history": [], "ledger": [], "recovered": 0}
    try:
        st = CheckpointStore(fed.agg_dir / "checkpoints").load()
        out["history"] = [h["round"] for h in st.history] if st is not None else []
        out["checkpoint_round"] = st.round if st is not None else 0
    except CheckpointError as e:
        out["checkpoint_ok"], out["checkpoint_error"] = False, str(e)
    led = fed.agg_dir / "ledger.jsonl"
    if led.exists():
        try:
            # a SIGKILL mid-append may leave a torn last line (never committed; repaired when the
            # aggregator reopens its ledger): a crash artifact, not a lost or forged entry
            verify(led, allow_torn_tail=True)
            ents = [e for e in read_ledger(led) if e.kind == "round_committed"]
            out["ledger"] = [e.fields["round"] for e in ents]
            out["recovered"] = sum(1 for e in ents if e.fields.get("recovered"))
        except LedgerError as e:
            out["ledger_ok"], out["ledger_error"] = False, str(e)
    return out


def simulator_params(fed: LoopbackFederation, rounds: int) -> dict[str, torch.Tensor]:
    """An uninterrupted run in one process (exact sums) over the same shards: the reference."""
    strat = make_strategy(fed.strategy, **fed.options)
    attach_reference(strat, fed.fed)  # Fed-CMP's default: the toy reference the aggregator's child computed
    fed.fed.reset()
    st = init_state(strat, fed.fed.init_params(), fed.n)
    for r in range(rounds):
        res = [fed.fed.local_update(st.params, k, r, 0.0) for k in range(fed.n)]
        st, _ = run_round(strat, st, [x.delta for x in res], [min(x.n_samples, SHARD) / SHARD for x in res],
                          plain_sum_insecure, final=r == rounds - 1)
    return st.params


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), (sorted(a), sorted(b))
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _wait(p: subprocess.Popen, timeout: float) -> int | None:
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def aggregator_kills(root: Path, points: list[str], *, rounds: int, n_silos: int = 3, strategy: str = "fedcmp",
                     options: dict | None = None, log: Callable[[str], None] = lambda s: None,
                     per_kill_timeout_s: float = 120.0) -> dict[str, Any]:
    """Kill the aggregator once at each of ``points`` (in order), restarting it each time; then finish."""
    options = {"rank": 2} if options is None and strategy == "fedcmp" else (options or {})
    fed = LoopbackFederation(root, n_silos, rounds, strategy, options)
    kills: list[dict[str, Any]] = []
    lost = corrupt = bad_ledger = 0
    try:
        silos = [fed.silo(i) for i in range(n_silos)]
        best = 0  # most rounds ever committed (checkpoint) so far
        t_all = time.time()
        for point in points:
            t0 = time.time()
            agg = fed.aggregator(point)
            rc = _wait(agg, per_kill_timeout_s)
            if rc is None:
                agg.kill()
                raise AssertionError(f"aggregator never reached {point} in {per_kill_timeout_s}s\n{fed.logs()}")
            if rc == 0:
                kills.append({"point": point, "reached": False})
                log(f"  {point}: not reached (the run finished)")
                break
            if rc != -9:
                raise AssertionError(f"aggregator exited {rc} before {point}\n{fed.logs()}")
            got = integrity(fed)
            corrupt += not got["checkpoint_ok"]
            bad_ledger += not got["ledger_ok"]
            n_hist = len(got["history"])
            lost += max(0, best - n_hist)
            # the ledger may lag the checkpoint by one round (killed between them) until the restart reconciles;
            # it may never hold a round the checkpoint lacks, nor any round twice
            ahead = sorted(set(got["ledger"]) - set(got["history"]))
            dup = len(got["ledger"]) - len(set(got["ledger"]))
            if got["history"] != list(range(n_hist)) or ahead or dup:
                bad_ledger += 1
            best = max(best, n_hist)
            kills.append({"point": point, "reached": True, "committed": n_hist, "ledger_rounds": len(got["ledger"]),
                          "seconds": round(time.time() - t0, 2), "checkpoint_ok": got["checkpoint_ok"],
                          "ledger_ok": got["ledger_ok"]})
            log(f"  kill {len(kills):2d} at {point:<24} committed {n_hist}, ledger {len(got['ledger'])} "
                f"({time.time() - t0:.1f}s)")
        agg = fed.aggregator(None)
        rc = _wait(agg, per_kill_timeout_s + 30 * rounds)
        if rc != 0:
            raise AssertionError(f"final aggregator exited {rc}\n{fed.logs()}")
        for p in silos:
            if _wait(p, 60) != 0:
                raise AssertionError(f"a silo did not finish cleanly\n{fed.logs()}")
        seconds = time.time() - t_all
        got = integrity(fed)
        hist = json.loads((fed.agg_dir / "history.json").read_text())
        hist_rounds = [h["round"] for h in hist]
        ledger_rounds = got["ledger"]
        gaps = sorted(set(range(rounds)) - set(ledger_rounds)) + sorted(set(ledger_rounds) - set(range(rounds)))
        dups = len(ledger_rounds) - len(set(ledger_rounds))
        lost += len(set(range(rounds)) - set(hist_rounds))
        final = fed.final_params()
        resumed = [e["resumed_round"] for e in fed.events() if e["event"] == "listening"]
        return {
            "kills": sum(1 for k in kills if k.get("reached")), "kill_log": kills, "rounds": rounds,
            "history_rounds": hist_rounds, "ledger_rounds": ledger_rounds, "rounds_lost": lost,
            "ledger_gaps": len(gaps) + dups + bad_ledger, "ledger_ok": got["ledger_ok"],
            "corrupt_checkpoints": corrupt + (not got["checkpoint_ok"]), "recovered_ledger_entries": got["recovered"],
            "ledger_equals_history": ledger_rounds == hist_rounds == list(range(rounds)),
            "resumed_rounds": resumed, "seconds": round(seconds, 1), "final": final,
            "max_abs_diff_vs_simulator": max_abs_diff(final, simulator_params(fed, rounds)),
            "survivors_per_round": [len(h["survivors"]) for h in hist],
        }
    finally:
        fed.close()


# ---------------------------------------------------------------------------------------- silo kills


def _attempts(events: list[dict]) -> dict[int, list[dict]]:
    """Per round, its attempts in order: {phase: (participants, threshold, dropped)}, outcome."""
    out: dict[int, list[dict]] = {}
    for e in events:
        ev, r = e["event"], e.get("round")
        if ev == "round_started":
            out.setdefault(r, []).append({"sums": {}, "outcome": None, "train_dropouts": []})
        elif r in out and out[r][-1]["outcome"] is None:
            cur = out[r][-1]
            if ev == "sum_started":
                cur["sums"][e["phase"]] = {"participants": list(e["participants"]), "threshold": e["threshold"],
                                           "dropped": []}
            elif ev == "dropouts" and str(e.get("stage", "")).startswith("sum phase "):
                cur["sums"][int(e["stage"].split()[-1])]["dropped"] = list(e["silos"])
            elif ev == "dropouts" and e.get("stage") == "train":
                cur["train_dropouts"] = list(e["silos"])
            elif ev == "round_committed":
                cur["outcome"] = "committed"
            elif ev == "round_abandoned":
                cur["outcome"], cur["reason"] = "abandoned", e.get("reason", "")
    return out


def replay(fed: LoopbackFederation, attempts: dict[int, list[dict]], rounds: int, *,
           include_dropped: bool = False) -> dict[str, torch.Tensor]:
    """Each committed round recomputed from the silos' own contributions over the sets the aggregator
    reported (or, ``include_dropped``, over every participant: the negative control)."""
    strat = make_strategy(fed.strategy, **fed.options)
    attach_reference(strat, fed.fed)
    fed.fed.reset()
    params = fed.fed.init_params()
    public, server = strat.init_public(params), strat.init_server_state(params)
    for r in range(rounds):
        att = [a for a in attempts[r] if a["outcome"] == "committed"][-1]

        def sum_phase(phase, _public, _phase_public, r=r, att=att):
            s = att["sums"][phase]
            inc = sorted(set(s["participants"]) - set(s["dropped"]))
            if include_dropped:  # every participant that computed an input for this sum, dropped or not
                inc = sorted(x for x in s["participants"]
                             if x in inc or (fed.root / x / f"contrib-{r}-{phase}.npz").exists())
            parts = [fed.contributions(x, r, phase) for x in inc]
            arrays = {k: sum(p[k].astype(np.float64) for p in parts) for k in parts[0]}
            return PhaseSum(sums_from_arrays(arrays, len(inc), dtype=torch.float32), tuple(inc))

        o = run_phases(strat, params, strat.round_public(public, r == rounds - 1), server, sum_phase)
        params, public, server = o.params, o.public, o.server_state
    return params


def silo_kills(root: Path, schedule: list[list[tuple[int, int, str]]], *, rounds: int, n_silos: int = 4,
               strategy: str = "fedcmp", options: dict | None = None, log: Callable[[str], None] = lambda s: None,
               per_kill_timeout_s: float = 90.0) -> dict[str, Any]:
    """Each entry of ``schedule`` is one event: silos (index, phase, message type) killed in the same round.

    An event arms the kill(s) (from the next round on, in a round where the sum has every silo),
    waits for the victims to die, restarts them, then arms the next event.
    """
    options = {"rank": 2} if options is None and strategy == "fedcmp" else (options or {})
    fed = LoopbackFederation(root, n_silos, rounds, strategy, options, max_failed_rounds=5)
    done: list[dict[str, Any]] = []
    try:
        agg = fed.aggregator(None)
        silos = [fed.silo(i) for i in range(n_silos)]
        t_all = time.time()
        for event in schedule:
            started = [e["round"] for e in fed.events() if e["event"] == "round_started"]
            not_before = (max(started) + 1) if started else 0
            for i, phase, kind in event:
                fed.trigger(i).write_text(f"{not_before}:{phase}:{kind}")
            end = time.time() + per_kill_timeout_s
            victims = {i for i, _, _ in event}
            while victims and time.time() < end and agg.poll() is None:
                for i in sorted(victims):
                    if silos[i].poll() is not None:
                        if silos[i].returncode != -9:
                            raise AssertionError(f"silo-{i} exited {silos[i].returncode}\n{fed.logs()}")
                        fed.trigger(i).unlink()
                        silos[i] = fed.silo(i)
                        victims.discard(i)
                time.sleep(0.05)
            if victims:
                for i in victims:
                    fed.trigger(i).unlink(missing_ok=True)
                log(f"  event {event}: not reached")
                done.append({"event": event, "reached": False})
                continue
            done.append({"event": event, "reached": True})
            log(f"  event {len(done):2d}: killed {[(fed.names[i], f'p{p}:{k}') for i, p, k in event]}")
        if _wait(agg, 60 + 10 * rounds) != 0:
            raise AssertionError(f"aggregator exited {agg.returncode}\n{fed.logs()}")
        for p in silos:
            if _wait(p, 60) != 0:
                raise AssertionError(f"a silo did not finish cleanly\n{fed.logs()}")
        seconds = time.time() - t_all
        attempts = _attempts(fed.events())
        final = fed.final_params()
        # every completed sum had >= threshold survivors; every sum below threshold abandoned its round
        sums_done = [s for r in attempts.values() for a in r if a["outcome"] == "committed" for s in a["sums"].values()]
        below = [s for s in sums_done if len(set(s["participants"]) - set(s["dropped"])) < s["threshold"]]
        abandoned = [a for r in attempts.values() for a in r if a["outcome"] == "abandoned"]
        kills_seen = _silo_deaths(fed)
        inclusion_ok, inclusion_rows = _check_inclusion(kills_seen, attempts)
        return {
            "events": done, "kill_events": sum(1 for d in done if d["reached"]),
            "silo_kills": len(kills_seen), "rounds": rounds, "seconds": round(seconds, 1),
            "committed_sums": len(sums_done), "sums_below_threshold": len(below),
            "abandoned_attempts": len(abandoned), "abandon_reasons": [a.get("reason", "") for a in abandoned],
            "inclusion_ok": inclusion_ok, "inclusion": inclusion_rows,
            "max_abs_diff_replay": max_abs_diff(final, replay(fed, attempts, rounds)),
            "max_abs_diff_replay_with_dropped": max_abs_diff(final, replay(fed, attempts, rounds, include_dropped=True)),
            "survivors_per_round": [len(h["survivors"])
                                    for h in json.loads((fed.agg_dir / "history.json").read_text())],
        }
    finally:
        fed.close()


def _silo_deaths(fed: LoopbackFederation) -> list[tuple[str, int, int, str]]:
    """(silo, round, phase, type) for every self-kill the silo logs report."""
    out = []
    for s in fed.names:
        for line in (fed.root / f"{s}.log").read_text(errors="replace").splitlines():
            if line.startswith("fault_silo: SIGKILL after "):
                kind, _, _, phase, _, _, rnd = line.split("after ", 1)[1].split()
                out.append((s, int(rnd), int(phase), kind))
    return out


def _check_inclusion(deaths, attempts) -> tuple[bool, list[dict]]:
    """A silo killed after it signed the consistency step (or later) in phase p is in phase p's sum
    (Bonawitz et al.: an input that arrived and was signed for is summed); killed before it, it is
    not (killed between its MaskedInput and its signature, the sum aborts); either way no later
    phase sums it, and a multi-phase round that lost a silo after phase 0 is abandoned (its next
    phase names the whole set, the dead silo too, and aborts: nothing of that round is revealed)."""
    rows, ok = [], True
    late = {"ConsistencySignature", "UnmaskResponse"}
    for s, r, p, kind in deaths:
        att = next(a for a in attempts[r] if p in a["sums"] and s in a["sums"][p]["participants"])
        inc = set(att["sums"][p]["participants"]) - set(att["sums"][p]["dropped"])
        want = kind in late
        later = [q for q, x in att["sums"].items() if q > p and s in set(x["participants"]) - set(x["dropped"])]
        good = (s in inc) == want and not later
        if att["outcome"] == "abandoned":
            # the round was abandoned at its last started phase, whose sum aborted (nothing revealed); a later
            # phase names phase 0's whole set, the dead silo too (one set per round, issue 25), so only the
            # phases that completed before it count
            done = sorted(att["sums"])[:-1]
            good = not [q for q in later if q in done]
        ok &= good
        rows.append({"silo": s, "round": r, "phase": p, "after": kind, "in_sum": s in inc,
                     "round_outcome": att["outcome"], "ok": good})
    return ok, rows
