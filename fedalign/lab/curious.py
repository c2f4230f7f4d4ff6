"""An honest-but-curious aggregator: record everything it receives in a run, then try to recover
single silos' updates from it (the suite's tests and benchmarks/bench_curious.py run it).

:func:`curious_run` runs a federation in one process (real Coordinator, real SiloParticipants in
threads, the in-memory transport with every message through the wire format, SecAgg) with the
aggregator's :class:`ServerTransport` wrapped so that every envelope it receives is kept, and
with each silo's contribution to each sum recorded at the silo (the ground truth the aggregator
must not learn). :func:`analyse` then plays the curious aggregator:

- *masked inputs*: for every silo, round and phase, the correlation between the MaskedInput
  words (read as signed fixed point, which is what the aggregator would decode) and that silo's
  contribution; and for every proper subset of a sum's silos, the correlation between the sum
  of their masked inputs (mod 2^32) and the sum of their contributions: pairwise masks cancel
  only over a whole sum and self masks only after unmasking, so every one of these must be
  statistically zero (|r| below ``z`` standard errors, 1/sqrt(N) for a vector of N words: phases differ
  in length, so each |r| is judged by its own N and reported as |r|·sqrt(N)); a recovered update shows
  as a large |r|. The sum over all silos before unmasking is checked the same way.
- *shares*: from the UnmaskResponses, how many shares of each silo's self-mask seed and of its
  mask key the aggregator received; holding t of both would unmask that silo alone.
- *unmasked sums*: every Sums the strategy was handed covers at least ``min_silos`` silos and
  equals the sum of exactly those silos' contributions (to fixed-point precision), and is far
  from every single silo's contribution.

The same analysis on a run whose mask is deliberately weakened (:func:`weak_mask`, patched in by
the caller as tests/crypto/test_mask_uniformity.py does) must report recovery: that is what
shows the harness can see a leak.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedalign.crypto.hazmat.prg import apply_masks
from fedalign.crypto.messages import MaskedInput, UnmaskResponse
from fedalign.fedcmp.strategies import make_strategy
from fedalign.lab.inprocess import DiesAfter, RandomUpdate, RecordingStrategy, random_projector, run_inprocess, silo_names
from fedalign.protocol.messages import SumStart


def weak_mask(mask_bits: int = 24):
    """A broken ``apply_masks``: every mask stream keeps only its low ``mask_bits`` bits.

    Still consistent (each stream is cut the same way where it is added and where it is removed),
    so sums stay exact and the run commits; only the masking of each input is weak.
    """
    keep = np.uint32((1 << mask_bits) - 1)

    def weak_masks(target, add_keys=(), sub_keys=(), **kw):
        for keys, sign in ((add_keys, 1), (sub_keys, -1)):
            for k in keys:
                m = np.zeros_like(target)
                apply_masks(m, [k])
                m &= keep
                if sign > 0:
                    target += m
                else:
                    target -= m

    return weak_masks


class RecordingServer:
    """The aggregator's transport, keeping every envelope it receives (and the SumStarts it sends)."""

    def __init__(self, inner) -> None:
        self.inner, self.traffic = inner, inner.traffic
        self.received: list[Any] = []
        self.phase_of: dict[int, int] = {}  # instance -> strategy phase

    def send(self, to, env):
        if isinstance(env.message, SumStart):
            self.phase_of[env.message.instance] = env.message.phase
        return self.inner.send(to, env)

    def recv(self, timeout_s):
        env = self.inner.recv(timeout_s)
        if env is not None:
            self.received.append(env)
        return env

    def close(self):
        self.inner.close()


@dataclass
class CuriousRun:
    received: list[Any]
    phase_of: dict[int, int]
    contributions: dict[tuple[int, int, str], dict[str, np.ndarray]]
    sums: list[tuple[int, Any]]
    history: list[dict]
    min_silos: int
    extra: dict[str, Any] = field(default_factory=dict)


def curious_run(*, n_silos: int = 5, rounds: int = 2, strategy: str = "fedavg", options: dict | None = None,
                d_vision: int = 48, d_model: int = 96, scale: float = 0.02, clip: float = 1.0,
                min_silos: int = 3, drop_after_shares: str | None = None) -> CuriousRun:
    """``drop_after_shares``: that silo's connection is cut right after its EncryptedShares of round 0
    (a dropout whose mask key the aggregator must then reconstruct, but not its self-mask seed)."""
    strat = RecordingStrategy(make_strategy(strategy, **(options or {})))
    # Fed-CMP's default reliability "reference": a public reference (here a fixed small step, as public
    # as the coordinator's own update on its public set would be)
    strat.inner.reference_update = lambda p: {k: 0.01 * torch.ones_like(v) for k, v in p.items()}
    servers: list[RecordingServer] = []

    def recording(server):
        servers.append(RecordingServer(server))
        return servers[0]

    def drop(s: str, client, net):
        return DiesAfter(client, net, "EncryptedShares", None, 0) if s == drop_after_shares else client

    # a step deadline of 3 s: the dropped silo is waited for that long (in memory a live silo answers in
    # milliseconds; the rounds tests run at 1.5 s)
    run = run_inprocess(
        strat, {s: RandomUpdate(i, scale, fresh_on_retry=False) for i, s in enumerate(silo_names(n_silos))},
        random_projector(d_vision, d_model), strategy_name=strategy, options=options or {},
        policy=dict(rounds=rounds, min_silos=min_silos, step_deadline_s=3, heartbeat_timeout_s=2,
                    roster_grace_s=0.2, clip=clip),
        silo_policy=dict(min_silos=min_silos, heartbeat_interval_s=0.5, max_weight=64),
        wrap_server=recording, wrap_client=drop, capture_events=False, join_timeout_s=30)
    if run.error is not None:
        raise run.error
    server = servers[0]
    return CuriousRun(server.received, server.phase_of, run.contributions, strat.sums, run.state.history, min_silos)


def _flat(c: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(c[k], np.float64).ravel() for k in sorted(c)])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d else 0.0


def _z(a: np.ndarray, b: np.ndarray) -> float:
    """|corr(a, b)| in standard errors under independence (1/sqrt(N) for N words)."""
    return abs(_corr(a, b)) * float(np.sqrt(len(a)))


def analyse(run: CuriousRun, *, z: float = 5.0) -> dict[str, Any]:
    masked: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    shares: dict[tuple[int, int], dict[str, dict[str, int]]] = {}
    for env in run.received:
        m = env.message
        if isinstance(m, MaskedInput):
            key = (m.round_id, run.phase_of[m.instance_id])
            masked.setdefault(key, {})[env.sender] = np.asarray(m.masked, np.uint32)
        elif isinstance(m, UnmaskResponse):
            per = shares.setdefault((m.round_id, run.phase_of[m.instance_id]), {})
            for owner in m.self_seed_shares:
                per.setdefault(owner, {"self_seed": 0, "mask_key": 0})["self_seed"] += 1
            for owner in m.mask_key_shares:
                per.setdefault(owner, {"self_seed": 0, "mask_key": 0})["mask_key"] += 1

    single, control, subsets, full = [], [], [], []
    n_words: list[int] = []
    for (r, ph), by_silo in sorted(masked.items()):
        silos = sorted(by_silo)
        x = {s: _flat(run.contributions[(r, ph, s)]) for s in silos}
        n_words.append(len(next(iter(x.values()))))
        for s in silos:
            y = by_silo[s].view(np.int32).astype(np.float64)
            single.append(_z(y, x[s]))
            control.extend(_z(y, x[o]) for o in silos if o != s)
        for k in range(2, len(silos) + 1):
            for sub in itertools.combinations(silos, k):
                tot = np.zeros_like(by_silo[silos[0]])
                for s in sub:
                    tot += by_silo[s]
                r_ = _z(tot.view(np.int32).astype(np.float64), sum(x[s] for s in sub))
                (full if k == len(silos) else subsets).append(r_)

    # shares: a silo whose self-seed AND mask-key shares both reached the threshold is unmaskable alone
    exposed = []
    for (r, ph), per in shares.items():
        for owner, c in per.items():
            if c["self_seed"] >= run.min_silos and c["mask_key"] >= run.min_silos:
                exposed.append((r, ph, owner))

    # the unmasked sums the strategy was handed
    sums_rows = []
    by_round_phase = {}
    for i, (ph, sums) in enumerate(run.sums):
        by_round_phase.setdefault(ph, []).append(sums)
    for h in run.history:
        r = h["round"]
        for ph, lst in by_round_phase.items():
            if r >= len(lst):
                continue
            sums = lst[r]
            inc = sorted(h["survivors"])
            got = _flat({k: v.double().numpy() for k, v in sums.tensors.items()})
            want = sum(_flat(run.contributions[(r, ph, s)]) for s in inc)
            nearest_single = min(float(np.abs(got - _flat(run.contributions[(r, ph, s)])).max()) for s in inc)
            sums_rows.append({"round": r, "phase": ph, "n_silos": sums.n_silos,
                              "err_vs_included_sum": float(np.abs(got - want).max()),
                              "min_dist_to_a_single_silo": nearest_single})
    max_single = max(single) if single else 0.0
    max_subset = max(subsets) if subsets else 0.0
    max_full = max(full) if full else 0.0
    recovered = max(max_single, max_subset, max_full) > z
    return {
        "n_values": sorted(set(n_words)), "bound": z, "masked_inputs": len(single),
        "max_z_own": max_single, "mean_z_own": float(np.mean(single)) if single else 0.0,
        "max_z_other": max(control) if control else 0.0,
        "subsets_checked": len(subsets), "max_z_subset": max_subset,
        "max_z_all_before_unmask": max_full,
        "silos_with_both_secrets_revealed": exposed,
        "sums": sums_rows, "min_n_silos_in_a_sum": min((s["n_silos"] for s in sums_rows), default=0),
        "max_err_sum_vs_included": max((s["err_vs_included_sum"] for s in sums_rows), default=0.0),
        "min_dist_sum_to_single": min((s["min_dist_to_a_single_silo"] for s in sums_rows), default=0.0),
        "recovered": bool(recovered or exposed),
    }
