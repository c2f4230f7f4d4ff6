"""Fed-CMP math (docs/design.md §3-§4) as pure torch functions: silo-side contributions, aggregator steps.

Silo-side functions take one silo's tensors; aggregator-side functions take a
:class:`fedalign.fedcmp.strategy.Sums` (element-wise sums over silos) and refuse anything else, so a
per-silo list can never reach them. No I/O, no networking; randomness only via ``generator``.

Per weight matrix (m×n, rank r) and round t, with M_k = Δ_k + e_k:
    S1  P_k = w_k M_k Q_r                      U   = orth(Σ P_k)
    S2  A_k = w_k Uᵀ M_k  [+ w_k ρ_k Uᵀ M_k, w_k ρ_k]
        Â   = Σ A_k / Σ w_k   or   (Σ wρUᵀM + κ W Ā) / (Σ wρ + κ W)
        C_t = Â + β (Uᵀ U_{t-1}) C_{t-1}       θ ← θ + η U C_t       Q_r ← orth(Âᵀ)
    silo keeps e_k = M_k − U Uᵀ M_k (error feedback).
"""

from __future__ import annotations

import torch

from fedalign.fedcmp.strategy import Sums

__all__ = [
    # names of the tensors that travel
    "key",
    # shared helpers
    "orth",
    "effective_rank",
    "initial_right_basis",
    "transport",
    # silo side
    "left_factor",
    "coefficients",
    "reliability",
    "reliability_terms",
    "agreement",
    "sharpen",
    "basis_weight",
    "direction",
    "error_residual",
    # aggregator side (Sums only)
    "shared_basis",
    "fuse_coefficients",
    "consensus_direction",
    "weighted_mean",
    "momentum_step",
    "next_right_basis",
    "server_update",
    # bookkeeping
    "orthogonality_error",
    "matrix_payload_numbers",
]

# Suffixes of the per-matrix tensors that travel (contributions) or are broadcast (public).
P, A, RA, RW = "P", "A", "rA", "rw"  # contributions: left factor, coeffs, reliable coeffs, wρ
Q, U, U_PREV, C_PREV = "Q", "U", "U_prev", "C_prev"  # public state
D, D_BAR = "D", "D_bar"  # consensus reliability: unit-norm fresh coefficients; their mean (public)
R = "R"  # reference reliability: the coordinator's own update from θ_t on its public set (public, m×n)
RHO = "rho"  # a silo's own last ρ per matrix, kept in its private state (diagnostics, never sent)
E = "e"  # a silo's error-feedback residual per matrix, kept in its private state (sent once: FE)
FE = "wE"  # contribution in the run's final round only: w·e_k, the residual flushed beside the coefficients
FLUSH = "flush"  # public flag, shape (1,): 1.0 in the run's final round (silos flush their residuals), else 0.0
WD, WEIGHT = "wd", "weight"  # weighted small tensors; Σ w


def key(name: str, part: str) -> str:
    """Wire name of ``part`` for parameter ``name`` (e.g. ``'0.weight/P'``)."""
    return f"{name}/{part}"


# --------------------------------------------------------------------------- shared helpers


def orth(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of ``x`` (m×r, m ≥ r) by QR with a positive R diagonal.

    Computed in float64 and cast back, so ``‖QᵀQ − I‖`` stays ~1e-7 in float32. The sign fix
    makes the result unique for full-rank input (Householder QR leaves signs arbitrary); zero
    diagonal entries (rank-deficient input) keep the sign +1, and Q is orthonormal regardless.
    """
    if x.ndim != 2 or x.shape[0] < x.shape[1]:
        raise ValueError(f"orth: expected a tall m×r matrix (m ≥ r), got shape {tuple(x.shape)}")
    q, r = torch.linalg.qr(x.to(torch.float64), mode="reduced")
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1.0
    return (q * sign).to(x.dtype)


def effective_rank(shape: tuple[int, ...] | torch.Size, rank: int | None) -> int:
    """The rank used for an m×n matrix: ``min(rank, m, n)`` (``None`` means full rank)."""
    m, n = int(shape[0]), int(shape[1])
    if rank is None:
        return min(m, n)
    if rank < 1:
        raise ValueError(f"rank must be ≥ 1, got {rank}")
    return min(rank, m, n)


def initial_right_basis(
    n: int, r: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Round-0 right basis Q_r (n×r): orth of a Gaussian draw from a public-seeded generator."""
    return orth(torch.randn(n, r, generator=generator, dtype=torch.float64)).to(dtype)


def transport(u: torch.Tensor, u_prev: torch.Tensor, c_prev: torch.Tensor) -> torch.Tensor:
    """The previous step U_{t-1}C_{t-1} expressed in the current basis: (Uᵀ U_{t-1}) C_{t-1}.

    Orthogonal projection onto span(U); zero at round 0 (U_{t-1} = 0). Used both as OPM's
    momentum term and as reliability's public reference.
    """
    return (u.T @ u_prev) @ c_prev


def orthogonality_error(u: torch.Tensor) -> float:
    """‖UᵀU − I‖_F (in float64)."""
    u64 = u.to(torch.float64)
    return float(torch.linalg.matrix_norm(u64.T @ u64 - torch.eye(u.shape[1], dtype=torch.float64)))


def matrix_payload_numbers(m: int, n: int, r: int, reliability: bool | str) -> int:
    """Numbers one silo uploads for one m×n matrix per round: r(m+n), plus r·n + 1 with reliability
    (``True``/``"blend"``), plus r·n more for ``"consensus"`` (its extra phase)."""
    mode = ("blend" if reliability else "off") if isinstance(reliability, bool) else reliability
    extra = {"off": 0, "blend": r * n + 1, "reference": r * n + 1, "consensus": 2 * r * n + 1}[mode]
    return r * (m + n) + extra


# --------------------------------------------------------------------------- silo side


def left_factor(m_k: torch.Tensor, q_r: torch.Tensor, weight: float) -> torch.Tensor:
    """S1 contribution P_k = w_k · M_k Q_r (m×r)."""
    return weight * (m_k @ q_r)


def coefficients(m_k: torch.Tensor, u: torch.Tensor, weight: float) -> torch.Tensor:
    """S2 contribution A_k = w_k · Uᵀ M_k (r×n)."""
    return weight * (u.T @ m_k)


def reliability(delta: torch.Tensor, u: torch.Tensor, reference: torch.Tensor) -> float:
    """ρ_k ∈ [0, 1]: cosine of the fresh coefficients Uᵀ Δ_k with the public reference, clipped at 0.

    ``reference`` is the previous global step expressed in U (:func:`transport`); when it or the
    coefficients vanish (round 0, a silo with no update) there is nothing to judge by: ρ = 1.
    Uses Δ_k, not M_k: error-feedback residuals would drown the round's own signal.
    """
    fresh = (u.T @ delta).flatten().to(torch.float64)
    ref = reference.flatten().to(torch.float64)
    nf, nr = torch.linalg.vector_norm(fresh), torch.linalg.vector_norm(ref)
    if nf == 0 or nr == 0:
        return 1.0
    return float(torch.clamp(fresh @ ref / (nf * nr), 0.0, 1.0))


def agreement(delta: torch.Tensor, reference: torch.Tensor) -> float:
    """ρ_k ∈ [0, 1] for reliability "reference": max(0, cos(Δ_k, Δ_ref)) in the matrix's own space.

    ``reference`` is the coordinator's update from the same θ_t on its public set, broadcast at the
    start of the round, so ρ exists before the shared basis does and can weight phase 0's sum too.
    ρ = 1 when either vanishes (nothing to judge by). Uses Δ_k, not M_k (see :func:`reliability`).
    """
    a = delta.flatten().to(torch.float64)
    b = reference.flatten().to(torch.float64)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return 1.0
    return float(torch.clamp(a @ b / (na * nb), 0.0, 1.0))


def basis_weight(weight: float, rho: float, kappa: float) -> float:
    """A silo's weight in phase 0's sum under reliability "reference": w_k (ρ_k + κ) / (1 + κ) ∈ [0, w_k].

    The shared basis U = orth(Σ P_k) is then spanned mostly by reliable silos' updates: with U built
    from every silo alike, unreliable silos' directions take up the rank and the reliable silos'
    coefficients lose what U misses (measured: results/reliability.md). κ keeps every silo in it.
    """
    return weight * (rho + kappa) / (1.0 + kappa)


def sharpen(rho: float, floor: float = 0.0, power: float = 1.0) -> float:
    """ρ' = (max(0, ρ − floor) / (1 − floor))^power ∈ [0, 1]: a silo-side map of the raw cosine.

    ``floor`` zeroes agreement below it (FLTrust's ReLU is ``floor = 0``); ``power`` > 1 widens the
    gap between high and middling agreement. Identity at the defaults.
    """
    if not 0 <= floor < 1 or not power > 0:
        raise ValueError(f"sharpen: need 0 ≤ floor < 1 and power > 0, got {floor}, {power}")
    x = max(0.0, float(rho) - floor) / (1.0 - floor)
    return min(1.0, x) ** power


def reliability_terms(
    m_k: torch.Tensor, delta: torch.Tensor, u: torch.Tensor, reference: torch.Tensor | None, weight: float,
    *, floor: float = 0.0, power: float = 1.0, normalize: bool = False, rho: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """S2 reliability contributions (w_k ρ_k s_k Uᵀ M_k, [w_k ρ_k]) and ρ_k itself (for the silo's own log).

    ρ_k is ``rho`` when given (reliability "reference" computes it before phase 0), else the
    sharpened :func:`reliability` of Δ_k against ``reference`` (r×n, in U). ``normalize``
    (FLTrust's magnitude normalisation): s_k = ‖Uᵀ Δ_ref‖ / ‖Uᵀ M_k‖ with ``reference`` = Uᵀ Δ_ref,
    so a silo's reliable term has the reference's size whatever its own step size; else s_k = 1.
    """
    if rho is None:
        rho = sharpen(reliability(delta, u, reference), floor, power)
    coeff = u.T @ m_k
    if normalize and reference is not None:
        nc = float(torch.linalg.vector_norm(coeff.to(torch.float64)))
        nr = float(torch.linalg.vector_norm(reference.to(torch.float64)))
        if nc > 0 and nr > 0:
            coeff = coeff * (nr / nc)
    wr = weight * rho
    return wr * coeff, torch.tensor([wr], dtype=m_k.dtype), rho


def direction(delta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Consensus-phase contribution: the fresh coefficients Uᵀ Δ_k scaled to unit norm (zero stays zero).

    Unweighted and normalised, so every silo counts once in the consensus whatever its sample
    count or update size: large updates cannot buy agreement with themselves.
    """
    c = u.T @ delta
    norm = torch.linalg.vector_norm(c)
    return c / norm if norm > 0 else c


def error_residual(m_k: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Error-feedback residual e_k = M_k − U Uᵀ M_k: the part of M_k the basis did not carry."""
    return m_k - u @ (u.T @ m_k)


# --------------------------------------------------------------------------- aggregator side


def _sums(sums: object, where: str) -> Sums:
    if not isinstance(sums, Sums):
        raise TypeError(
            f"{where}: aggregator-side Fed-CMP math takes a Sums (aggregated tensors), "
            f"got {type(sums).__name__}; per-silo values never reach the aggregator"
        )
    return sums


def _total_weight(sums: Sums, where: str) -> torch.Tensor:
    w = sums[WEIGHT].reshape(())
    if not float(w) > 0:
        raise ValueError(f"{where}: Σ w_k must be positive, got {float(w)}")
    return w


def shared_basis(sums: Sums, name: str) -> torch.Tensor:
    """U = orth(Σ_k P_k) for parameter ``name`` (m×r, orthonormal columns)."""
    return orth(_sums(sums, "shared_basis")[key(name, P)])


def consensus_direction(sums: Sums, name: str) -> torch.Tensor:
    """D̄ = Σ_k D_k / K: the silos' unweighted mean direction in the shared basis (public reference)."""
    s = _sums(sums, "consensus_direction")
    return s[key(name, D)] / s.n_silos


def weighted_mean(sums: Sums, name: str, part: str = WD) -> torch.Tensor:
    """Σ w_k Δ_k / Σ w_k for a tensor that rides along as a plain weighted sum (``part`` FE: the
    flushed residuals Σ w_k e_k / Σ w_k of the run's final round)."""
    s = _sums(sums, "weighted_mean")
    return s[key(name, part)] / _total_weight(s, "weighted_mean")


def fuse_coefficients(sums: Sums, name: str, reliability_blend: bool, kappa: float = 1.0) -> torch.Tensor:
    """Fused coefficients Â (r×n) from S2's sums.

    Plain: Ā = Σ A_k / W. Blended (CRA): (Σ w ρ UᵀM + κ W Ā) / (Σ w ρ + κ W) — never a bare ratio,
    so a small Σ w ρ cannot let one silo's coefficients through.
    """
    s = _sums(sums, "fuse_coefficients")
    w = _total_weight(s, "fuse_coefficients")
    a_bar = s[key(name, A)] / w
    if not reliability_blend:
        return a_bar
    if kappa <= 0:
        raise ValueError(f"fuse_coefficients: kappa must be > 0 for the blend, got {kappa}")
    wr = s[key(name, RW)].reshape(())
    return (s[key(name, RA)] + kappa * w * a_bar) / (wr + kappa * w)


def momentum_step(
    a_hat: torch.Tensor, u: torch.Tensor, u_prev: torch.Tensor, c_prev: torch.Tensor, beta: float
) -> torch.Tensor:
    """OPM: C_t = Â + β (Uᵀ U_{t-1}) C_{t-1}; the step U C_t stays in the current subspace."""
    if beta == 0:
        return a_hat
    return a_hat + beta * transport(u, u_prev, c_prev)


def next_right_basis(a_hat: torch.Tensor) -> torch.Tensor:
    """Warm start for the next round: Q_r = orth(Âᵀ) (n×r)."""
    return orth(a_hat.T)


def server_update(theta: torch.Tensor, u: torch.Tensor, c: torch.Tensor, lr: float) -> torch.Tensor:
    """θ_{t+1} = θ_t + η_s U C_t."""
    return theta + lr * (u @ c)
