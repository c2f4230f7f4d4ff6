"""The toy federation shared by the e2e tests and their silo processes (same data everywhere)."""

from __future__ import annotations

import torch

from fedalign.lab.toy import ToyFederation, make_toy


def toy(n_silos: int, seed: int = 0) -> ToyFederation:
    prob = make_toy(m=6, n=5, n_silos=n_silos, per_silo=32, generator=torch.Generator().manual_seed(seed))
    return ToyFederation(prob, seed=seed, steps=3, lr=0.05, batch=8)
