"""Fed-CMP and the baselines (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi) behind one Strategy interface.

Every strategy here computes its server step from secure sums only (:class:`fedalign.fedcmp.strategy.Sums`).
The baselines take one sum per round (Σ w_k Δ_k and Σ w_k) and differ only in the server
optimiser applied to the weighted mean update; Fed-CMP takes two (docs/design.md §3) and keeps its
carried state public (right basis, previous step) plus a private error-feedback residual per silo.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Literal

import torch

from fedalign.fedcmp import core as fm
from fedalign.protocol.errors import ConfigError, ProtocolError
from fedalign.fedcmp.strategy import PhaseOutcome, Strategy, Sums, Tensors, public_problems

__all__ = [
    "strategy_options",
    "FedAvg",
    "FedProx",
    "FedAvgM",
    "FedAdam",
    "FedYogi",
    "FedCMP",
    "FedCMPConfig",
    "RELIABILITY_MODES",
    "PRESETS",
    "make_strategy",
]


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(int(d) for d in shape)


def _check_phase(strategy: Strategy, phase: int) -> None:
    if not 0 <= phase < strategy.n_phases:
        raise ProtocolError(f"{strategy.name}: phase {phase} out of range 0..{strategy.n_phases - 1}")


def _need(mapping: Tensors, k: str, where: str) -> torch.Tensor:
    try:
        return mapping[k]
    except KeyError:
        raise ProtocolError(f"{where}: missing tensor {k!r}") from None


# --------------------------------------------------------------------------- baselines


class _MeanUpdateStrategy:
    """One secure sum per round (Σ w Δ, Σ w); subclasses choose the server optimiser."""

    name = "mean-update"
    n_phases = 1
    prox_mu = 0.0

    def init_public(self, params: Tensors) -> Tensors:
        return {}

    def init_server_state(self, params: Tensors) -> Tensors:
        return {}

    def init_silo_state(self, params: Tensors) -> Tensors:
        return {}

    def round_public(self, public: Tensors, final: bool) -> Tensors:
        return dict(public)

    def contribution_spec(self, phase: int, params: Tensors, public: Tensors | None = None) -> dict[str, tuple[int, ...]]:
        _check_phase(self, phase)
        spec = {fm.key(n, fm.WD): tuple(t.shape) for n, t in params.items()}
        spec[fm.WEIGHT] = (1,)
        return spec

    def public_violations(self, phase: int, params: Tensors, public: Tensors) -> list[str]:
        _check_phase(self, phase)
        return public_problems({}, public, params)

    def silo_contribution(
        self, phase: int, delta: Tensors, weight: float, public: Tensors, silo_state: Tensors
    ) -> tuple[Tensors, Tensors]:
        _check_phase(self, phase)
        out = {fm.key(n, fm.WD): weight * d for n, d in delta.items()}
        out[fm.WEIGHT] = torch.tensor([float(weight)])
        return out, silo_state

    def aggregate(
        self, phase: int, sums: Sums, params: Tensors, public: Tensors, server_state: Tensors
    ) -> PhaseOutcome:
        _check_phase(self, phase)
        mean = {n: fm.weighted_mean(sums, n) for n in params}
        new_params, new_state = self._server_step(mean, params, server_state)
        return PhaseOutcome(public={}, params=new_params, server_state=new_state)

    def _server_step(self, mean: Tensors, params: Tensors, state: Tensors) -> tuple[Tensors, Tensors]:
        raise NotImplementedError


class FedAvg(_MeanUpdateStrategy):
    """FedAvg (McMahan et al. 2017) with a server learning rate: θ ← θ + η Δ̄."""

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = float(server_lr)
        self.name = "fedavg" if self.server_lr == 1.0 else f"fedavg-lr{self.server_lr:g}"

    @property
    def options(self) -> dict[str, Any]:
        return {"server_lr": self.server_lr}

    def _server_step(self, mean, params, state):
        return {n: params[n] + self.server_lr * mean[n] for n in params}, state


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg's server step, local loss + (μ/2)‖θ − θ_t‖²."""

    def __init__(self, mu: float = 0.01, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        self.prox_mu = float(mu)
        self.name = f"fedprox-mu{self.prox_mu:g}"

    @property
    def options(self) -> dict[str, Any]:
        return {"mu": self.prox_mu, "server_lr": self.server_lr}


class FedAvgM(_MeanUpdateStrategy):
    """FedAvgM (Hsu et al. 2019): server heavy-ball momentum v ← β v + Δ̄, θ ← θ + η v."""

    def __init__(self, beta: float = 0.5, server_lr: float = 1.0) -> None:
        self.beta, self.server_lr = float(beta), float(server_lr)
        self.name = f"fedavgm-b{self.beta:g}" + ("" if self.server_lr == 1.0 else f"-lr{self.server_lr:g}")

    @property
    def options(self) -> dict[str, Any]:
        return {"beta": self.beta, "server_lr": self.server_lr}

    def init_server_state(self, params):
        return {f"v/{n}": torch.zeros_like(t) for n, t in params.items()}

    def _server_step(self, mean, params, state):
        v = {n: self.beta * state[f"v/{n}"] + mean[n] for n in params}
        return {n: params[n] + self.server_lr * v[n] for n in params}, {f"v/{n}": v[n] for n in params}


class _AdaptiveServer(_MeanUpdateStrategy):
    """Adaptive server optimisers of Reddi et al. 2021 on the pseudo-gradient Δ̄ (no bias correction)."""

    kind = "adam"

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        self.server_lr, self.beta1, self.beta2, self.tau = map(float, (server_lr, beta1, beta2, tau))
        self.name = f"fed{self.kind}-lr{self.server_lr:g}"

    @property
    def options(self) -> dict[str, Any]:
        return {"server_lr": self.server_lr, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}

    def init_server_state(self, params):
        st = {f"m/{n}": torch.zeros_like(t) for n, t in params.items()}
        st.update({f"v/{n}": torch.full_like(t, self.tau**2) for n, t in params.items()})
        return st

    def _second_moment(self, v: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _server_step(self, mean, params, state):
        new_params, new_state = {}, {}
        for n in params:
            m = self.beta1 * state[f"m/{n}"] + (1 - self.beta1) * mean[n]
            v = self._second_moment(state[f"v/{n}"], mean[n] * mean[n])
            new_params[n] = params[n] + self.server_lr * m / (v.sqrt() + self.tau)
            new_state[f"m/{n}"], new_state[f"v/{n}"] = m, v
        return new_params, new_state


class FedAdam(_AdaptiveServer):
    """FedAdam: v ← β2 v + (1 − β2) Δ̄²."""

    kind = "adam"

    def _second_moment(self, v, g2):
        return self.beta2 * v + (1 - self.beta2) * g2


class FedYogi(_AdaptiveServer):
    """FedYogi: v ← v − (1 − β2) Δ̄² sign(v − Δ̄²)."""

    kind = "yogi"

    def _second_moment(self, v, g2):
        return v - (1 - self.beta2) * g2 * torch.sign(v - g2)


# --------------------------------------------------------------------------- Fed-CMP


RELIABILITY_MODES = ("off", "blend", "consensus", "reference")

ReferenceUpdate = Callable[[Tensors], Tensors]
"""The coordinator's reference hook for reliability ``"reference"``: θ_t -> Δ_ref, its own update from
θ_t on a small clean public set (FLTrust's root-data update, here made public). Set by the driver on
:attr:`FedCMP.reference_update`: the lab from its problem's public set, ``aggregator serve`` from a
``silo reference`` process (aggregator/reference.py)."""


@dataclass(frozen=True)
class FedCMPConfig:
    """Fed-CMP's switches (docs/design.md §4). ``rank=None`` is full rank; ``seed`` seeds round-0 Q_r (public)."""

    rank: int | None = 16  # r = 8 lost to FedAvg under domain skew on the embedded world (results/)
    error_feedback: bool = True
    # the coordinator's public reference (FLTrust through sums), measured in results/reliability.md: the
    # driver must give it a public set (aggregator.toml [reference]; the lab's problems have one)
    reliability: Literal["off", "blend", "consensus", "reference"] = "reference"
    kappa: float = 0.02  # "blend" and "consensus" were measured at κ = 1 (docs/fedcmp.md)
    beta: float = 0.5
    server_lr: float = 1.0
    seed: int = 0
    # reliability's silo-side map of the raw cosine (core.sharpen) and FLTrust's magnitude normalisation
    rho_floor: float = 0.0
    rho_power: float = 1.0
    normalize: bool = False
    reliable_basis: bool = True  # reliability "reference": ρ also weights phase 0's sum (the basis)
    rho_smoothing: float = 0.7  # reliability "reference": ρ_t = s ρ_{t-1} + (1 − s) ρ_raw, at each silo (private)
    # with error feedback: the run's final round also sums w·e_k, each silo's residual, beside its
    # coefficients (same phase, same set: that phase reveals Σ w M_k over the round's one set); the
    # residual held 43% of the movement on the embedded world under DP (results/dp_utility.md)
    flush: bool = True

    def __post_init__(self) -> None:
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise ConfigError(f"fedcmp.rank: expected a positive int or None, got {self.rank!r}")
        if self.reliability not in RELIABILITY_MODES:
            raise ConfigError(f"fedcmp.reliability: expected one of {RELIABILITY_MODES}, got {self.reliability!r}")
        if not self.kappa > 0:
            raise ConfigError(f"fedcmp.kappa: expected > 0, got {self.kappa!r}")
        if not 0 <= self.beta < 1:
            raise ConfigError(f"fedcmp.beta: expected 0 ≤ beta < 1, got {self.beta!r}")
        if not self.server_lr > 0:
            raise ConfigError(f"fedcmp.server_lr: expected > 0, got {self.server_lr!r}")
        if not 0 <= self.rho_floor < 1:
            raise ConfigError(f"fedcmp.rho_floor: expected 0 ≤ rho_floor < 1, got {self.rho_floor!r}")
        if not self.rho_power > 0:
            raise ConfigError(f"fedcmp.rho_power: expected > 0, got {self.rho_power!r}")
        if not 0 <= self.rho_smoothing < 1:
            raise ConfigError(f"fedcmp.rho_smoothing: expected 0 ≤ rho_smoothing < 1, got {self.rho_smoothing!r}")

    def under_dp(self) -> FedCMPConfig:
        """DP defaults: reliability off; error feedback and OPM (β = 0.5) stay on.

        Measured on the embedded world at issue 11's DP recipe (ε = 8, r = 32, results/notes/dp_notes.md):
        error feedback lowered held-out NLL in 3 of 4 runs (label 0.648 -> 0.578; one label seed
        0.883 -> 0.907). The first design (docs/design.md §4) turned it off to avoid re-injecting
        noise; the residual is post-processing of a DP output, so it costs no privacy. OPM β = 0.5
        against the first design's β = 0: 0.907 -> 0.826 on that label seed (β = 0.9 rang under DP
        on the prototype). The public reference's ρ, computed from noisy updates, cost 0.021-0.083
        under label skew."""
        return replace(self, reliability="off")


class FedCMP:
    """Fed-CMP: canonical-basis compression with reliability-blended fusion and OPM (docs/design.md §3-§4).

    Every 2-D tensor is factored at rank ``min(rank, m, n)``; other tensors ride along in the last
    phase as plain weighted sums, with server heavy-ball momentum β (what OPM is at full rank).
    Phase 0 sums left factors P_k; the last phase sums coefficients A_k (and the reliability
    terms), the small tensors and Σ w. Reliability ``blend`` judges each silo against the previous
    global step (docs/design.md §4); ``consensus`` (our addition, measured in results/) adds a middle
    phase that sums unit-norm fresh coefficients, so every silo counts once whatever its weight
    or update size, and judges each silo against that unweighted direction consensus.
    """

    prox_mu = 0.0

    def __init__(self, config: FedCMPConfig | None = None, reference_update: ReferenceUpdate | None = None) -> None:
        self.config = config or FedCMPConfig()
        # reliability "reference": the coordinator's hook θ_t -> Δ_ref, called by init_public (θ_0) and after
        # each round's last phase (θ_{t+1}): the next round's reference is public before its phase 0
        self.reference_update = reference_update
        c = self.config
        self.n_phases = 3 if c.reliability == "consensus" else 2
        self._last = self.n_phases - 1
        label = "fedcmp" if replace(c, seed=0) == FedCMPConfig() else "fedcmp(" + ",".join(
            f"{k}={v}" for k, v in asdict(c).items() if k != "seed" and getattr(FedCMPConfig(), k) != v
        ) + ")"
        self.name = label

    @property
    def options(self) -> dict[str, Any]:
        return asdict(self.config)

    def _reference(self, params: Tensors) -> Tensors:
        if self.reference_update is None:
            raise ConfigError(
                "fedcmp.reliability 'reference' needs the coordinator's public set: set the strategy's "
                "reference_update hook (fedalign-lab simulate does; aggregator serve from [reference] config)"
            )
        ref = self.reference_update({k: v.detach().clone() for k, v in params.items()})
        fac = self._factored(params)
        missing = [n for n in fac if n not in ref]
        if missing:
            raise ProtocolError(f"{self.name}: the reference update lacks {missing}")
        return {fm.key(n, fm.R): ref[n].detach().to(params[n].dtype).clone() for n in fac}

    def _rho(self, name: str, delta: torch.Tensor, public: Tensors, where: str, silo_state: Tensors) -> float:
        """Reliability "reference": this silo's ρ for matrix ``name`` against the round's public reference,
        smoothed over rounds with its own last ρ (kept in its private state) when ``rho_smoothing`` > 0."""
        c = self.config
        rho = fm.sharpen(fm.agreement(delta, _need(public, fm.key(name, fm.R), where)), c.rho_floor, c.rho_power)
        prev = silo_state.get(fm.key(name, fm.RHO))
        if c.rho_smoothing and prev is not None:
            rho = c.rho_smoothing * float(prev.reshape(-1)[0]) + (1.0 - c.rho_smoothing) * rho
        return rho

    # which tensors are factored, and at which rank
    def _factored(self, params: Tensors) -> dict[str, tuple[int, int, int]]:
        return {
            n: (t.shape[0], t.shape[1], fm.effective_rank(t.shape, self.config.rank))
            for n, t in params.items()
            if t.ndim == 2
        }

    def init_public(self, params: Tensors, generator: torch.Generator | None = None) -> Tensors:
        g = generator if generator is not None else torch.Generator().manual_seed(self.config.seed)
        pub: Tensors = {}
        for n, (m, k, r) in self._factored(params).items():
            dt = params[n].dtype
            pub[fm.key(n, fm.Q)] = fm.initial_right_basis(k, r, g, dtype=dt)
            pub[fm.key(n, fm.U_PREV)] = torch.zeros(m, r, dtype=dt)
            pub[fm.key(n, fm.C_PREV)] = torch.zeros(r, k, dtype=dt)
        if self.config.reliability == "reference":  # the coordinator's update from θ_0 (round 0's reference)
            pub.update(self._reference(params))
        return pub

    def init_server_state(self, params: Tensors) -> Tensors:
        # heavy-ball buffers for the small tensors (the factored ones carry theirs in public state)
        fac = self._factored(params)
        return {f"v/{n}": torch.zeros_like(t) for n, t in params.items() if n not in fac}

    def init_silo_state(self, params: Tensors) -> Tensors:
        if not self.config.error_feedback:
            return {}
        return {fm.key(n, fm.E): torch.zeros_like(params[n]) for n in self._factored(params)}

    def _flushes(self) -> bool:
        return self.config.flush and self.config.error_feedback

    def round_public(self, public: Tensors, final: bool) -> Tensors:
        """``public`` with the flush flag (1.0 in the run's final round), when residuals are flushed."""
        out = {k: v for k, v in public.items() if k != fm.FLUSH}
        if self._flushes():
            dt = next((v.dtype for v in out.values() if v.is_floating_point()), torch.float32)
            out[fm.FLUSH] = torch.tensor([1.0 if final else 0.0], dtype=dt)
        return out

    def _flagged(self, public: Tensors | None) -> bool:
        """Whether this round flushes: the flag is set (public_violations has checked it is 0 or 1)."""
        return self._flushes() and public is not None and fm.FLUSH in public and bool(public[fm.FLUSH].reshape(-1)[0] == 1)

    def contribution_spec(self, phase: int, params: Tensors, public: Tensors | None = None) -> dict[str, tuple[int, ...]]:
        _check_phase(self, phase)
        fac = self._factored(params)
        if phase == 0:
            return {fm.key(n, fm.P): (m, r) for n, (m, k, r) in fac.items()}
        if phase < self._last:  # consensus phase
            return {fm.key(n, fm.D): (r, k) for n, (m, k, r) in fac.items()}
        spec: dict[str, tuple[int, ...]] = {}
        for n, (m, k, r) in fac.items():
            spec[fm.key(n, fm.A)] = (r, k)
            if self.config.reliability != "off":
                spec[fm.key(n, fm.RA)] = (r, k)
                spec[fm.key(n, fm.RW)] = (1,)
            if self._flagged(public):
                spec[fm.key(n, fm.FE)] = (m, k)
        for n, t in params.items():
            if n not in fac:
                spec[fm.key(n, fm.WD)] = tuple(t.shape)
        spec[fm.WEIGHT] = (1,)
        return spec

    def public_spec(self, phase: int, params: Tensors) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the public tensors a silo uses in ``phase``: the round's carried state
        (Q, U_{t-1}, C_{t-1}, and Δ_ref under reliability "reference") and what earlier phases published."""
        _check_phase(self, phase)
        spec: dict[str, tuple[int, ...]] = {}
        for n, (m, k, r) in self._factored(params).items():
            spec[fm.key(n, fm.Q)] = (k, r)
            spec[fm.key(n, fm.U_PREV)] = (m, r)
            spec[fm.key(n, fm.C_PREV)] = (r, k)
            if self.config.reliability == "reference":
                spec[fm.key(n, fm.R)] = (m, k)
            if phase >= 1:
                spec[fm.key(n, fm.U)] = (m, r)
            if phase >= 2:
                spec[fm.key(n, fm.D_BAR)] = (r, k)
        return spec

    def public_violations(self, phase: int, params: Tensors, public: Tensors) -> list[str]:
        fac = self._factored(params)
        bases = tuple(fm.key(n, p) for n in fac for p in (fm.Q, fm.U, fm.U_PREV))
        spec = self.public_spec(phase, params)
        if self._flushes() and fm.FLUSH in public:  # the flush flag (absent: 0, no flush); refused when not pinned
            spec[fm.FLUSH] = (1,)
        problems = public_problems(spec, public, params, orthonormal=bases,
                                   zero_ok=tuple(fm.key(n, fm.U_PREV) for n in fac))
        flag = public.get(fm.FLUSH) if self._flushes() else None
        if isinstance(flag, torch.Tensor) and flag.numel() == 1 and float(flag.reshape(-1)[0]) not in (0.0, 1.0):
            problems.append(f"public flag {fm.FLUSH!r} is {float(flag.reshape(-1)[0])!r}, expected 0 or 1")
        return problems

    def _carried(self, name: str, delta: torch.Tensor, silo_state: Tensors) -> torch.Tensor:
        if self.config.error_feedback:
            return delta + _need(silo_state, fm.key(name, fm.E), f"{self.name} silo state")
        return delta

    def silo_contribution(
        self, phase: int, delta: Tensors, weight: float, public: Tensors, silo_state: Tensors
    ) -> tuple[Tensors, Tensors]:
        _check_phase(self, phase)
        where = f"{self.name} phase {phase} public state"
        fac = self._factored(delta)
        # the public values (Δ_ref, the bases) arrive on the CPU; a silo may train on its GPU
        dev = next(iter(delta.values())).device
        public = {k: v.to(dev) for k, v in public.items()}
        out: Tensors = {}
        if phase == 0:
            c = self.config
            for n in fac:
                m_k = self._carried(n, delta[n], silo_state)
                w0 = weight
                if c.reliability == "reference" and c.reliable_basis:
                    w0 = fm.basis_weight(weight, self._rho(n, delta[n], public, where, silo_state), c.kappa)
                out[fm.key(n, fm.P)] = fm.left_factor(m_k, _need(public, fm.key(n, fm.Q), where), w0)
            return out, silo_state
        if phase < self._last:  # consensus phase: unit-norm fresh coefficients, unweighted
            for n in fac:
                out[fm.key(n, fm.D)] = fm.direction(delta[n], _need(public, fm.key(n, fm.U), where))
            return out, silo_state
        new_state = dict(silo_state)
        for n in fac:
            m_k = self._carried(n, delta[n], silo_state)
            u = _need(public, fm.key(n, fm.U), where)
            out[fm.key(n, fm.A)] = fm.coefficients(m_k, u, weight)
            if self.config.reliability != "off":
                rho = None
                if self.config.reliability == "consensus":
                    ref = _need(public, fm.key(n, fm.D_BAR), where)
                elif self.config.reliability == "reference":
                    ref = u.T @ _need(public, fm.key(n, fm.R), where)  # Uᵀ Δ_ref (for normalisation)
                    rho = self._rho(n, delta[n], public, where, silo_state)
                else:
                    ref = fm.transport(
                        u, _need(public, fm.key(n, fm.U_PREV), where), _need(public, fm.key(n, fm.C_PREV), where)
                    )
                c = self.config
                out[fm.key(n, fm.RA)], out[fm.key(n, fm.RW)], rho = fm.reliability_terms(
                    m_k, delta[n], u, ref, weight, floor=c.rho_floor, power=c.rho_power, normalize=c.normalize,
                    rho=rho)
                new_state[fm.key(n, fm.RHO)] = torch.tensor([rho], dtype=m_k.dtype)  # the silo's own log only
            if self.config.error_feedback:
                e_k = fm.error_residual(m_k, u)
                if self._flagged(public):  # the run's final round: the residual goes into this same sum
                    out[fm.key(n, fm.FE)] = weight * e_k
                    e_k = torch.zeros_like(e_k)
                new_state[fm.key(n, fm.E)] = e_k
        for n, d in delta.items():
            if n not in fac:
                out[fm.key(n, fm.WD)] = weight * d
        out[fm.WEIGHT] = torch.tensor([float(weight)])
        return out, new_state

    def aggregate(
        self, phase: int, sums: Sums, params: Tensors, public: Tensors, server_state: Tensors
    ) -> PhaseOutcome:
        _check_phase(self, phase)
        fac = self._factored(params)
        c = self.config
        if phase == 0:
            bases = {fm.key(n, fm.U): fm.shared_basis(sums, n) for n in fac}
            err = max((fm.orthogonality_error(u) for u in bases.values()), default=0.0)
            return PhaseOutcome(public=bases, metrics={"orth_error": err})
        if phase < self._last:
            return PhaseOutcome(public={fm.key(n, fm.D_BAR): fm.consensus_direction(sums, n) for n in fac})
        where = f"{self.name} aggregate public state"
        new_params: Tensors = {}
        nxt: Tensors = {}
        for n in fac:
            u = _need(public, fm.key(n, fm.U), where)
            u_prev = _need(public, fm.key(n, fm.U_PREV), where)
            c_prev = _need(public, fm.key(n, fm.C_PREV), where)
            a_hat = fm.fuse_coefficients(sums, n, c.reliability != "off", c.kappa)
            step = fm.momentum_step(a_hat, u, u_prev, c_prev, c.beta)
            new_params[n] = fm.server_update(params[n], u, step, c.server_lr)
            if self._flagged(public):  # the silos' flushed residuals, applied once as a plain weighted mean
                new_params[n] = new_params[n] + c.server_lr * fm.weighted_mean(sums, n, fm.FE)
            nxt[fm.key(n, fm.Q)] = fm.next_right_basis(a_hat)
            nxt[fm.key(n, fm.U_PREV)] = u
            nxt[fm.key(n, fm.C_PREV)] = step
        new_server: Tensors = {}
        for n in params:
            if n not in fac:  # small tensors: plain heavy-ball with the same β (OPM at full rank)
                v = fm.weighted_mean(sums, n)
                if c.beta:
                    v = v + c.beta * _need(server_state, f"v/{n}", f"{self.name} server state")
                new_server[f"v/{n}"] = v
                new_params[n] = params[n] + c.server_lr * v
        if c.reliability == "reference":  # next round's reference: the coordinator's update from θ_{t+1}
            nxt.update(self._reference(new_params))
        metrics = {}
        if c.reliability != "off" and fac:
            w = float(sums[fm.WEIGHT].reshape(()))
            metrics["mean_reliability"] = sum(float(sums[fm.key(n, fm.RW)].reshape(())) for n in fac) / (len(fac) * w)
        return PhaseOutcome(public=nxt, params=new_params, server_state=new_server, metrics=metrics)


# --------------------------------------------------------------------------- the registry

PRESETS: dict[str, tuple[Callable[..., Strategy], dict[str, Any]]] = {
    # name -> (class, the preset's option values); options given by name override them
    "fedavg": (FedAvg, {}),
    "fedavg-lr0.5": (FedAvg, {"server_lr": 0.5}),
    "fedprox": (FedProx, {"mu": 0.01}),
    "fedavgm-b0.5": (FedAvgM, {"beta": 0.5}),
    "fedavgm-b0.9": (FedAvgM, {"beta": 0.9}),
    "fedadam": (FedAdam, {"server_lr": 0.01}),
    "fedyogi": (FedYogi, {"server_lr": 0.01}),
    "fedcmp": (FedCMP, {}),
}
"""Every strategy by name; a new one is one class with an ``options`` property and one row here."""


def make_strategy(name: str, *, dp: bool = False, **options) -> Strategy:
    """A strategy by registry name, with ``options`` over the preset's values (ConfigError naming the
    options the strategy knows for an unknown one). Every strategy takes options: FedProx's ``mu``,
    the server optimisers' ``server_lr``/``beta``..., Fed-CMP's FedCMPConfig fields.

    ``dp``: the silos train under differential privacy, so Fed-CMP starts from its measured DP
    defaults (:meth:`FedCMPConfig.under_dp`: reliability off) before ``options`` apply. The
    aggregator, the silos and the simulator all build strategies here, so they agree on those defaults.
    """
    if name not in PRESETS:
        raise ConfigError(f"--strategy: expected one of {sorted(PRESETS)}, got {name!r}")
    cls, preset = PRESETS[name]
    if cls is FedCMP:
        base = FedCMPConfig().under_dp() if dp else FedCMPConfig()
        try:
            return FedCMP(FedCMPConfig(**{**asdict(base), **options}))
        except TypeError as exc:
            raise ConfigError(f"fedcmp options: {exc}") from None
    known = set(cls().options)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"strategy {name!r}: unknown option(s) {unknown}; it takes {sorted(known)}")
    try:
        return cls(**{**preset, **options})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"strategy {name!r} options {options}: {exc}") from None


def strategy_options(strategy: Strategy) -> dict[str, Any]:
    """The resolved options silos need to rebuild ``strategy`` exactly from a RoundStart (FedProx's μ
    among them: the silo trains with the μ its rebuilt strategy carries)."""
    return dict(getattr(strategy, "options", {}))
