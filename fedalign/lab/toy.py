"""A synthetic projector-alignment problem for tests and quick checks: no models, seconds to run.

Silo k holds inputs x ~ N(μ_k, I) (skewed means) and targets y = W* x (+ a wrong map for
unreliable silos); the projector is a linear map (weight m×n, bias m) trained by local SGD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedalign.fedcmp.strategy import Tensors
from fedalign.lab.problem import LocalResult

__all__ = ["ToyProblem", "ToyFederation", "make_toy", "small_toy", "ToyTrainer", "MAX_WEIGHT"]

MAX_WEIGHT = 64.0  # the silos' weight cap (records) in the in-process toy federations


@dataclass(frozen=True)
class ToyProblem:
    target: torch.Tensor  # m×n
    inputs: list[torch.Tensor]  # per silo, N_k×n
    outputs: list[torch.Tensor]  # per silo, N_k×m
    test_x: torch.Tensor
    test_y: torch.Tensor

    def init_params(self, generator: torch.Generator) -> Tensors:
        m, n = self.target.shape
        return {"weight": 0.01 * torch.randn(m, n, generator=generator, dtype=self.target.dtype),
                "bias": torch.zeros(m, dtype=self.target.dtype)}

    def loss(self, params: Tensors, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> float:
        x = self.test_x if x is None else x
        y = self.test_y if y is None else y
        return float(((x @ params["weight"].T + params["bias"] - y) ** 2).mean())

    def local_update(
        self, params: Tensors, silo: int, steps: int, lr: float, batch: int, generator: torch.Generator,
        prox_mu: float = 0.0,
    ) -> Tensors:
        """Δ_k after ``steps`` of minibatch SGD (+ FedProx's (μ/2)‖θ − θ_t‖²) from ``params``."""
        w, b = params["weight"].clone(), params["bias"].clone()
        x, y = self.inputs[silo], self.outputs[silo]
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (batch,), generator=generator)
            err = x[idx] @ w.T + b - y[idx]
            w -= lr * (2 * err.T @ x[idx] / batch + prox_mu * (w - params["weight"]))
            b -= lr * (2 * err.mean(0) + prox_mu * (b - params["bias"]))
        return {"weight": w - params["weight"], "bias": b - params["bias"]}


def make_toy(
    m: int = 12, n: int = 10, n_silos: int = 5, per_silo: int = 64, skew: float = 2.0,
    n_unreliable: int = 0, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
) -> ToyProblem:
    """Build a toy problem from ``generator`` (skew: spread of silo input means)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    target = torch.randn(m, n, generator=g, dtype=dtype) / n**0.5
    wrong = torch.randn(m, n, generator=g, dtype=dtype) / n**0.5
    xs, ys = [], []
    for k in range(n_silos):
        mu = skew * torch.randn(n, generator=g, dtype=dtype) / n**0.5
        x = mu + torch.randn(per_silo, n, generator=g, dtype=dtype)
        w = wrong if k >= n_silos - n_unreliable else target
        xs.append(x)
        ys.append(x @ w.T + 0.1 * torch.randn(per_silo, m, generator=g, dtype=dtype))
    tx = torch.randn(256, n, generator=g, dtype=dtype)
    return ToyProblem(target, xs, ys, tx, tx @ target.T)


class ToyFederation:
    """The toy as a :class:`simulation.problem.FederatedProblem` (local SGD, MSE as ``nll``)."""

    def __init__(self, problem: ToyProblem, seed: int, steps: int = 5, lr: float = 0.02, batch: int = 16,
                 unreliable: tuple[int, ...] = ()) -> None:
        self.problem, self.seed, self.steps, self.lr, self.batch = problem, seed, steps, lr, batch
        self.n_silos = len(problem.inputs)
        self.unreliable = unreliable

    def init_params(self) -> Tensors:
        return self.problem.init_params(torch.Generator().manual_seed(self.seed))

    def local_update(self, params: Tensors, silo: int, round: int, prox_mu: float) -> LocalResult:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + round * 1009 + silo)
        delta = self.problem.local_update(params, silo, self.steps, self.lr, self.batch, g, prox_mu)
        n = self.problem.inputs[silo].shape[0]
        return LocalResult(delta, n, self.problem.loss(params, self.problem.inputs[silo], self.problem.outputs[silo]))

    def reset(self) -> None:
        self._reference_calls = 0

    def reference_update(self, params: Tensors) -> Tensors:
        """The coordinator's reference (Fed-CMP reliability "reference"): the same local SGD from θ_t
        on a small clean public set (32 fresh inputs with the true map, its own generator)."""
        from fedalign.protocol.reference import reference_seed

        p = self.problem
        if not hasattr(self, "_public"):
            g = torch.Generator().manual_seed(self.seed * 31 + 997)
            x = torch.randn(32, p.target.shape[1], generator=g, dtype=p.target.dtype)
            self._public = ToyProblem(p.target, [x], [x @ p.target.T], p.test_x, p.test_y)
        t = getattr(self, "_reference_calls", 0)
        self._reference_calls = t + 1
        g = torch.Generator().manual_seed(reference_seed(self.seed, t))
        return self._public.local_update(params, 0, self.steps, self.lr, self.batch, g)

    def evaluate(self, params: Tensors) -> dict[str, float]:
        return {"nll": self.problem.loss(params)}


def small_toy(n_silos: int, seed: int = 0) -> ToyFederation:
    """The toy the suite and the in-process analyses federate: a 6×5 map, 32 records per silo, 3 SGD
    steps of batch 8 per round."""
    prob = make_toy(m=6, n=5, n_silos=n_silos, per_silo=32, generator=torch.Generator().manual_seed(seed))
    return ToyFederation(prob, seed=seed, steps=3, lr=0.05, batch=8)


class ToyTrainer:
    """A silo's RoundTrainer over the toy: deterministic per silo and round, like the simulator; a round
    trained again draws a fresh batch, as a real silo draws a fresh shard (a silo never puts one update
    into two sums)."""

    def __init__(self, fed: ToyFederation, index: int, *, fresh_on_retrain: bool = True) -> None:
        self.fed, self.index, self.fresh = fed, index, fresh_on_retrain
        self.attempts: dict[int, int] = {}

    def train(self, round_id: int, params: Tensors, *, prox_mu: float = 0.0):
        from fedalign.silo.store import TrainedUpdate

        k = self.attempts[round_id] = self.attempts.get(round_id, -1) + 1
        res = self.fed.local_update(params, self.index, round_id + (100_003 * k if self.fresh else 0), prox_mu)
        return TrainedUpdate(res.delta, res.n_samples, None)
