"""A step-by-step driver for secure-sum tests: silos, aggregator and messages in the open."""

from __future__ import annotations

import numpy as np

from fedalign.crypto import AggregatorSecureSum, Roster, SiloSecureSum, generate_identity

__all__ = ["Run"]


class Run:
    """n silos and an aggregator for one instance; the test moves messages by hand."""

    def __init__(self, n, config, *, round_id=0, instance_id=0, identities=None, seed=0, shape=(3, 5)):
        self.ids = [f"silo{i}" for i in range(n)]
        self.identities = identities or {s: generate_identity() for s in self.ids}
        self.roster = Roster({s: self.identities[s].public_bytes for s in self.ids})
        self.config = config
        rng = np.random.default_rng(seed)
        self.inputs = {
            s: {"w": rng.uniform(-1, 1, shape).astype(np.float32), "b": rng.uniform(-1, 1, 4).astype(np.float32)}
            for s in self.ids
        }
        self.silos = {
            s: SiloSecureSum(self.identities[s], s, self.roster, round_id, instance_id, config) for s in self.ids
        }
        for s in self.ids:
            self.silos[s].set_inputs(self.inputs[s])
        self.agg = AggregatorSecureSum(self.roster, round_id, instance_id, config)

    def start(self, silent=()):
        return [(s, m) for s in self.ids if s not in silent for m in self.silos[s].start()]

    def to_agg(self, outgoing):
        out = []
        for s, m in outgoing:
            out += self.agg.handle(s, m)
        return out or self.agg.close_step()

    def to_silos(self, incoming, silent=()):
        return [(d, a) for d, m in incoming if d not in silent for a in self.silos[d].handle(m)]

    def expected(self, included, name):
        return sum(self.inputs[s][name].astype(np.float64) for s in included)
