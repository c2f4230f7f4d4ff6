"""A silo transport that delays, duplicates and reorders messages both ways (tests/aggregator/test_chaos.py and benchmarks/bench_faults.py).

:class:`ChaosClient` wraps a silo's :class:`ClientTransport` (here the in-memory one, every
message through the real wire format): each message the silo sends is, at random, delayed
(then later ones overtake it: reordering) and/or sent twice; each message the silo receives is,
at random, delayed, held back behind the next one (reordering) or delivered twice. Which
directions duplicate is configurable, so a run can say which kind of duplicate a component
tolerates; a duplicated SumStart (a second "open this sum" for the same round and phase) is
left out unless ``dup_sum_start``: refusing a second sum per (round, phase) is the silo's
SumStart check, not the transport's business. :func:`chaos_run` runs a federation (:func:`fedalign.lab.toy_federation.run_federation`, real
Coordinator and SiloParticipants, SecAgg) with every silo behind a ChaosClient and returns what
it committed, for comparison with a run without chaos.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fedalign.lab.toy_federation import run_federation


@dataclass
class ChaosStats:
    sent: int = 0
    sent_delayed: int = 0
    sent_duplicated: int = 0
    sent_overtaken: int = 0
    received: int = 0
    received_delayed: int = 0
    received_duplicated: int = 0
    received_reordered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "lock"}


class ChaosClient:
    def __init__(self, inner: Any, rng: random.Random, stats: ChaosStats, *, p_delay: float = 0.3,
                 max_delay_s: float = 0.15, p_dup_up: float = 0.15, p_dup_down: float = 0.15,
                 p_reorder: float = 0.2, dup_sum_start: bool = False) -> None:
        self.inner, self.rng, self.stats = inner, rng, stats
        self.p_delay, self.max_delay_s, self.p_reorder = p_delay, max_delay_s, p_reorder
        self.p_dup_up, self.p_dup_down = p_dup_up, p_dup_down
        self.dup_sum_start = dup_sum_start
        self.traffic = inner.traffic
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._seq = 0  # submission order of sends
        self._delivered = 0  # highest submission number delivered so far

    def _deliver(self, seq: int, env: Any) -> None:
        with self._lock:
            if seq < self._delivered:
                self.stats.add(sent_overtaken=1)  # a later message left before this one
            self._delivered = max(self._delivered, seq)
            self.inner.send(env)

    def send(self, env: Any) -> int:
        with self._lock:
            self._seq += 1
            seq = self._seq
            r1, r2, d1, d2 = (self.rng.random() for _ in range(4))
        copies = 2 if r2 < self.p_dup_up else 1
        self.stats.add(sent=1, sent_duplicated=copies - 1)
        for c, d in zip(range(copies), (d1, d2)):
            if r1 < self.p_delay or c == 1:
                self.stats.add(sent_delayed=1)
                threading.Timer(d * self.max_delay_s, self._deliver, (seq, env)).start()
            else:
                self._deliver(seq, env)
        return 0

    def recv(self, timeout_s: float) -> Any:
        if self._pending:
            return self._pending.pop(0)
        env = self.inner.recv(timeout_s)
        if env is None:
            return None
        self.stats.add(received=1)
        r = self.rng.random
        if r() < self.p_dup_down and (self.dup_sum_start or type(env.message).__name__ != "SumStart"):
            self._pending.append(env)  # delivered again, after whatever comes next
            self.stats.add(received_duplicated=1)
        if r() < self.p_reorder:
            nxt = self.inner.recv(self.max_delay_s)
            if nxt is not None:
                self.stats.add(received=1, received_reordered=1)
                self._pending.insert(0, env)
                return nxt
        if r() < self.p_delay:
            self.stats.add(received_delayed=1)
            time.sleep(r() * self.max_delay_s)
        return env

    def close(self) -> None:
        self.inner.close()


def chaos_run(*, n_silos: int = 4, rounds: int = 3, seed: int = 0, chaos: bool = True, tmp=None,
              strategy: str = "fedcmp", options: dict | None = None, **chaos_kw: Any) -> dict[str, Any]:
    """One federation, every silo behind a ChaosClient (or none with ``chaos=False``)."""
    stats = ChaosStats()
    rngs: dict[str, random.Random] = {}

    def wrap(name, client, net):
        if not chaos:
            return client
        rng = rngs.setdefault(name, random.Random(f"{seed}/{name}"))
        return ChaosClient(client, rng, stats, **chaos_kw)

    t0 = time.time()
    res = run_federation(n_silos, rounds, strategy=strategy, options=options or {"rank": 2}, tmp=tmp,
                         wrap_client=wrap, policy_overrides={"step_deadline_s": 8, "heartbeat_timeout_s": 8},
                         silo_policy={"heartbeat_interval_s": 0.2})
    return {
        "error": res.error, "state": res.state, "seconds": time.time() - t0, "stats": stats.as_dict(),
        "silo_outcomes": res.silos, "events": res.events,
        "survivors": [h["survivors"] for h in res.state.history] if res.state is not None else None,
        "sum_failed": [e for e in res.events if e["event"] in ("sum_failed", "sum_refused")],
        "rejected": sum(1 for e in res.events if e["event"] == "sum_message_rejected"),
    }
