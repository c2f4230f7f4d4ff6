"""A whole-run leakage harness: everything the aggregator obtains, over all phases, rounds and retries,
against every silo's update, by exact linear algebra.

A round of a multi-phase strategy is several secure sums whose inputs are linear in the same
update X_k = w_k·M_k (Fed-CMP: phase 0 sums X_k·Q, phase 1 sums Uᵀ·X_k). Each sum on its own
hides X_k; the question is what all of them together give back. :func:`attack_run` runs a real
federation in one process (the real Coordinator, real SiloParticipants in threads, SecAgg, the
in-memory transport through the wire format) with a *capturing* coordinator that keeps every sum
it obtains together with the public values it sent to each silo (per silo: an equivocating
aggregator knows what it showed whom), and may act maliciously:

- ``schedule``: silos that die at a chosen point (after a given message of a given phase and
  round): crashes, lost connections;
- ``declare``: silos the aggregator leaves out of a phase although they are alive (a dropout it
  simply declares), including a later phase over another set than phase 0 (cross-phase
  differencing) and phase 0 over fewer silos than a later phase;
- ``tamper``: a function that rewrites the RoundStart or SumStart sent to one silo (equivocation:
  another basis, another reference, other options).

:func:`identifiable` then plays the aggregator with unlimited compute: it stacks every captured
sum as linear equations in the unknown per-silo inputs (each distinct X a silo ever fed into a
sum is one unknown block: a retry that trains afresh is a new unknown, a reused update the same
one), and computes, for each unknown, the part of it that lies in the row space *restricted to
that silo alone*: the linear functionals of one silo's X that some combination of the captured
sums equals exactly. Its norm relative to ‖X‖ is the identifiable fraction: 0 when the
aggregator learns only functions of sums over several silos, 1 when it can rebuild the update.
With reliability or consensus phases the inputs carry silo-private scalars (ρ_k); the harness runs
with reliability off (the equations stay linear) and the reliability terms are covered by
SECURITY.md's statement and the pinned options (tests/silo/test_strategy_pin.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from fedalign.aggregator.rounds import Coordinator
from fedalign.fedcmp import core as fm
from fedalign.fedcmp.strategies import make_strategy
from fedalign.lab.inprocess import DiesAfter, RandomUpdate, random_projector, run_inprocess, silo_names
from fedalign.lab.toy import MAX_WEIGHT
from fedalign.protocol.messages import RoundStart, SumStart

# the points at which a silo can die: after its UpdateReady (trained, before phase 0), or after one of
# its secure-sum messages in a phase
SUM_STEPS = ("KeyAdvertisement", "EncryptedShares", "MaskedInput", "ConsistencySignature", "UnmaskResponse")


@dataclass
class Captured:
    """One sum the aggregator obtained, and what it showed each included silo for it."""

    round: int
    phase: int
    instance: int
    included: tuple[str, ...]
    sums: dict[str, np.ndarray]
    public: dict[str, dict[str, np.ndarray]]  # silo -> the public values that silo computed with


@dataclass
class AttackRun:
    captured: list[Captured]
    truth: dict[tuple[str, int], dict[str, np.ndarray]]  # (silo, instance) -> X = w·M per matrix it fed in
    history: list[dict]
    events: list[dict]
    error: BaseException | None
    refusals: list[dict] = field(default_factory=list)
    one_phase: bool = False  # a mean-update strategy (FedAvg, FedProx, ...): each sum is Σ w·Δ itself
    trainers: dict[str, Any] = field(default_factory=dict)


def _capturing(tamper, declare):
    class CapturingCoordinator(Coordinator):
        """The real Coordinator, keeping every sum it obtains; optionally malicious (see the module doc)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.captured: list[Captured] = []
            self.shown_round: dict[str, dict[str, np.ndarray]] = {}
            self.shown_phase: dict[tuple[str, int], dict[str, np.ndarray]] = {}

        def _send(self, to, round_id, msg, *, instance=-1, phase=-1):
            if tamper is not None and isinstance(msg, (RoundStart, SumStart)):
                msg = tamper(to, msg)
            if isinstance(msg, RoundStart):
                self.shown_round[to] = {k: np.array(v) for k, v in msg.public.items()}
            elif isinstance(msg, SumStart):
                self.shown_phase[(to, msg.instance)] = {k: np.array(v) for k, v in msg.public.items()}
            return super()._send(to, round_id, msg, instance=instance, phase=phase)

        def _secure_sum(self, t, phase, participants, phase_public, seed, rec, *rest):
            if declare is not None:
                participants = declare(t, phase, list(participants))
            sums, included = super()._secure_sum(t, phase, participants, phase_public, seed, rec, *rest)
            inst = self._instance
            shown = {s: {**self.shown_round.get(s, {}), **self.shown_phase.get((s, inst), {})} for s in included}
            self.captured.append(Captured(t, phase, inst, tuple(included), {k: np.array(v) for k, v in sums.items()},
                                          shown))
            return sums, included

    return CapturingCoordinator


def attack_run(*, n_silos: int = 4, rounds: int = 2, options: dict | None = None, strategy: str = "fedcmp",
               schedule: dict[str, tuple[str, int, int]] | None = None,
               declare: Callable[[int, int, list[str]], list[str]] | None = None,
               tamper: Callable[[str, Any], Any] | None = None, min_silos: int = 3,
               silo_policy: dict | None = None, step_deadline_s: float = 0.6,
               max_failed_rounds: int = 3) -> AttackRun:
    """Run a federation under a capturing (possibly malicious) coordinator; see the module doc.

    ``schedule``: silo -> (message kind, round, phase) after which it dies (kind "UpdateReady":
    after training, before phase 0)."""
    if strategy == "fedcmp":
        options = {"rank": 2, "reliability": "off", "error_feedback": False, **(options or {})}
    options = dict(options or {})
    names = silo_names(n_silos)
    strat = make_strategy(strategy, **options)
    one_phase = strat.n_phases == 1
    params = random_projector(6, 5)
    truth: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    refusals: list[dict] = []
    lock = threading.Lock()
    fac = [n for n, t in params.items() if t.ndim == 2]

    def record(s: str, p, r: int, ph: int, inputs) -> None:
        cur = p.cur
        x = {}
        for n in fac:  # Fed-CMP adds its error-feedback residual; a mean update sends w·Δ as it is
            m = cur.delta[n] + (p.silo_state or {}).get(fm.key(n, fm.E), torch.zeros_like(cur.delta[n]))
            x[n] = (cur.weight * m).double().numpy()
        with lock:
            truth[(s, cur.joined[ph])] = x

    def dies(s: str, client, net):
        if not schedule or s not in schedule:
            return client
        kind, r, ph = schedule[s]
        return DiesAfter(client, net, kind, None if kind == "UpdateReady" else ph, r)

    def on_participant(s: str, p) -> None:
        p.on_refusal = lambda rec, s=s: refusals.append({"silo": s, **rec})

    trainers = {s: RandomUpdate(i) for i, s in enumerate(names)}
    run = run_inprocess(
        strat, trainers, params, strategy_name=strategy,
        policy=dict(rounds=rounds, min_silos=min_silos, train_deadline_s=10, step_deadline_s=step_deadline_s,
                    heartbeat_timeout_s=1.0, roster_wait_s=8, roster_grace_s=0.2, clip=4.0,
                    max_failed_rounds=max_failed_rounds),
        silo_policy={"min_silos": min_silos, "heartbeat_interval_s": 0.2, "aggregator_timeout_s": 20,
                     "max_weight": MAX_WEIGHT, **(silo_policy or {})},
        coordinator_class=_capturing(tamper, declare), wrap_client=dies, on_participant=on_participant,
        on_contribution=record, record_contributions=False)
    # a refusing silo may exit with an error; the harness reads the sums
    history = run.state.history if run.state is not None else []
    return AttackRun(run.coordinator.captured, truth, history, run.events, run.error, refusals, one_phase, trainers)


# ----------------------------------------------------------------------------- the analysis


def _map(phase: int, name: str, public: dict[str, np.ndarray], shape: tuple[int, int],
         one_phase: bool = False) -> list[tuple[str, np.ndarray]] | None:
    """The matrices of the linear maps X -> (what silo k adds to the sum), one per summed key of matrix
    ``name`` (``one_phase``: a mean-update strategy, whose sum is of X itself; Fed-CMP's last phase with
    the flush flag set also sums the residual (I − UUᵀ)X)."""
    m, n = shape
    if one_phase:
        return [(fm.key(name, fm.WD), np.eye(m * n))]
    eye = np.eye(m * n).reshape(m * n, m, n)
    if phase == 0:
        q = public.get(fm.key(name, fm.Q))
        if q is None or q.ndim != 2 or q.shape[0] != n:
            return None
        return [(fm.key(name, fm.P), np.stack([(b @ q).ravel() for b in eye], axis=1))]
    u = public.get(fm.key(name, fm.U))
    if u is None or u.ndim != 2 or u.shape[0] != m:
        return None
    out = [(fm.key(name, fm.A), np.stack([(u.T @ b).ravel() for b in eye], axis=1))]
    flag = public.get(fm.FLUSH)
    if flag is not None and float(np.asarray(flag).reshape(-1)[0]) == 1.0:
        out.append((fm.key(name, fm.FE), np.stack([(b - u @ (u.T @ b)).ravel() for b in eye], axis=1)))
    return out


def identifiable(run: AttackRun, *, tol: float = 1e-6) -> dict[tuple[str, str], float]:
    """For every distinct input X a silo fed into a captured sum, per matrix: the fraction ‖Π X‖ / ‖X‖ of
    it that linear combinations of all captured sums determine exactly (Π: the projection onto the
    functionals of that silo's X alone inside the row space of the captured equations)."""
    out: dict[tuple[str, str], float] = {}
    names = sorted({n for x in run.truth.values() for n in x})
    for name in names:
        labels: dict[str, int] = {}
        values: dict[str, np.ndarray] = {}
        rows = []  # one block of equations per summed key: (silo input label, its map) per included silo
        for c in run.captured:
            blocks = []
            ok = True
            for s in c.included:
                x = run.truth.get((s, c.instance))
                mp = _map(c.phase, name, c.public.get(s, {}), x[name].shape, run.one_phase) if x is not None else None
                if mp is None:
                    ok = False
                    break
                lab = f"{s}:{hashlib.sha256(x[name].tobytes()).hexdigest()[:12]}"
                labels.setdefault(lab, len(labels))
                values[lab] = x[name].ravel()
                blocks.append((lab, dict(mp)))
            if not ok or not blocks:
                continue
            for key in sorted({k for _, mp in blocks for k in mp}):
                # every summed key of this matrix is one block of equations; a silo shown other public
                # values (another flush flag) may not have added to this key: its map for it is zero
                if key in c.sums:  # which equations, not their values: identifiability is the row space's
                    rows.append([(lab, mp[key]) for lab, mp in blocks if key in mp])
        if not labels:
            continue
        d = next(iter(values.values())).size
        big = []
        for blocks in rows:
            mat = np.zeros((blocks[0][1].shape[0], d * len(labels)))
            for lab, m in blocks:
                j = labels[lab]
                mat[:, j * d:(j + 1) * d] += m
            big.append(mat)
        a = np.concatenate(big, axis=0)
        _, sv, vt = np.linalg.svd(a, full_matrices=False)
        v = vt[sv > tol * max(sv.max(), 1.0)]  # orthonormal basis of the row space
        for lab, j in labels.items():
            block = v[:, j * d:(j + 1) * d]  # rank × d: cosines between the row space and this silo's coordinates
            _, cs, wt = np.linalg.svd(block, full_matrices=False)
            shared = wt[cs > 1 - 1e-6]  # directions of X_lab the row space holds on their own
            x = values[lab]
            frac = float(np.linalg.norm(shared @ x) / max(np.linalg.norm(x), 1e-30)) if len(shared) else 0.0
            out[(lab, name)] = max(out.get((lab, name), 0.0), frac)
    return out


def worst(run: AttackRun) -> float:
    """The largest identifiable fraction of any silo's input in the run (0: only sums over several silos)."""
    fr = identifiable(run)
    return max(fr.values(), default=0.0)


# ----------------------------------------------------------------------------- random schedules


def random_schedule(rng: random.Random, n_silos: int, rounds: int, max_drops: int) -> dict[str, tuple[str, int, int]]:
    """Up to ``max_drops`` silos die, each at a random point: after training, or after any secure-sum
    message of phase 0 or 1, in any round (every phase boundary is a candidate)."""
    silos = [f"silo-{i}" for i in range(n_silos)]
    out = {}
    for s in rng.sample(silos, rng.randint(0, max_drops)):
        r = rng.randrange(rounds)
        if rng.random() < 0.15:
            out[s] = ("UpdateReady", r, -1)
        else:
            out[s] = (rng.choice(SUM_STEPS), r, rng.randrange(2))
    return out


def random_declare(rng: random.Random, n_silos: int) -> Callable[[int, int, list[str]], list[str]] | None:
    """A malicious aggregator that leaves one live silo out of one phase of one round (or not at all)."""
    if rng.random() < 0.5:
        return None
    victim, rnd, phase = f"silo-{rng.randrange(n_silos)}", rng.randrange(2), rng.randrange(2)

    def declare(t, ph, parts):
        return [s for s in parts if not (t == rnd and ph == phase and s == victim)] if len(parts) > 3 else parts

    return declare


def sweep(n: int, seed: int = 0, *, n_silos: int = 5, rounds: int = 2) -> dict[str, Any]:
    """``n`` random runs (dropout schedule and declared dropouts); the worst identifiable fraction."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sched = random_schedule(rng, n_silos, rounds, 2)
        run = attack_run(n_silos=n_silos, rounds=rounds, schedule=sched, declare=random_declare(rng, n_silos),
                         step_deadline_s=0.4)
        rows.append({"schedule": {k: list(v) for k, v in sched.items()}, "worst": worst(run),
                     "sums": len(run.captured), "committed": len(run.history),
                     "abandoned": sum(e["event"] == "round_abandoned" for e in run.events)})
    return {"runs": n, "worst": max(r["worst"] for r in rows), "sums": sum(r["sums"] for r in rows),
            "committed_rounds": sum(r["committed"] for r in rows),
            "abandoned_rounds": sum(r["abandoned"] for r in rows), "rows": rows}


def replace_public(msg, updates: dict[str, np.ndarray]):
    """``msg`` (RoundStart or SumStart) with public tensors replaced (an equivocating aggregator)."""
    return dataclasses.replace(msg, public={**msg.public, **updates})
