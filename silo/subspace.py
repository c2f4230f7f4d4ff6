"""Training the projector in a shared low-dimensional subspace: θ = θ_t + U·C per weight matrix.

Under DP the noise norm grows with the number of trained parameters (σ·C·√d per step). If every
silo trains only coefficients C (r×n) of each m×n weight matrix in a basis U (m×r, orthonormal
columns) that all silos share and that is *public* (computed from released values only), the
noise lives in r·n dimensions instead of m·n, while the update U·C stays expressive where the
signal is. This is Fed-CMP's canonical basis used on the training side (docs/design.md §4): the
aggregate of U·C_k lies in span(U), so Fed-CMP's rank-r sums carry it without truncation.

The basis here (:func:`public_basis`) is the top-r left singular subspace of the global
projector's cumulative update θ_t − θ_0: θ_0 and θ_t are known to every silo (θ_t is a
post-processed DP release), so U costs no privacy. At round 0 there is no cumulative update and
training is full-rank. A fixed basis made from public data by the coordinator (``silo
public-basis``: one pass over its public set from θ_0) travels as a safetensors file
(:func:`save_basis`, :func:`load_basis`; ``[train] public_basis`` in silo.toml). Whatever U a
silo is given, DP holds: the clipping and the noise act on the coefficients, and U·C is
post-processing; U only decides where the update can go.

:class:`SubspaceProjector` realises W = W_t + U·C for ``nn.Linear`` layers as
``frozen(x) + u(c(x))`` with ``c`` = Linear(n→r) (trainable, starts at 0) and ``u`` =
Linear(r→m) whose weight is the frozen U and whose bias is the layer's trainable bias: plain
``nn.Linear`` modules, so Opacus' ghost clipping and per-sample gradients apply unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["public_basis", "SubspaceProjector", "subspace_numel", "save_basis", "load_basis"]

ORTHONORMAL_TOL = 1e-3  # max |UᵀU − I| a basis file may show (float32 round-off is ~1e-6)


@torch.no_grad()
def public_basis(params: dict[str, torch.Tensor], init: dict[str, torch.Tensor], rank: int,
                 min_norm: float = 1e-8) -> dict[str, torch.Tensor]:
    """Per 2-D weight: U (m×r), the top-``rank`` left singular vectors of ``params − init``.

    Empty dict when the cumulative update is (numerically) zero, i.e. round 0: train full-rank.
    Deterministic (float64 SVD, sign-fixed), so every silo derives the same U from the same θ_t.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in params.items():
        if v.ndim != 2 or rank >= min(v.shape):
            continue
        d = (v.detach().double().cpu() - init[k].detach().double().cpu())
        if float(d.norm()) <= min_norm:
            return {}
        U, _, _ = torch.linalg.svd(d, full_matrices=False)
        U = U[:, :rank]
        sign = torch.sign(U[U.abs().argmax(0), torch.arange(U.shape[1])])  # fix the SVD's sign freedom
        out[k] = (U * sign).to(v.dtype)
    return out


class _LowRankLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, U: torch.Tensor):
        super().__init__()
        m, n = weight.shape
        r = U.shape[1]
        self.frozen = nn.Linear(n, m, bias=False)
        self.c = nn.Linear(n, r, bias=False)
        self.u = nn.Linear(r, m, bias=bias is not None)
        with torch.no_grad():
            self.frozen.weight.copy_(weight)
            self.c.weight.zero_()
            self.u.weight.copy_(U)
            if bias is not None:
                self.u.bias.copy_(bias)
        self.frozen.weight.requires_grad_(False)
        self.u.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(x) + self.u(self.c(x))

    @torch.no_grad()
    def weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.frozen.weight + self.u.weight @ self.c.weight
        return w, (self.u.bias.detach().clone() if self.u.bias is not None else None)


class SubspaceProjector(nn.Module):
    """A copy of an ``nn.Sequential`` projector at θ_t whose listed weights train only in span(U).

    ``bases`` maps ``"<index>.weight"`` to U (m×r); other layers train in full. ``state()``
    returns the equivalent plain projector state (same keys as the original).
    """

    def __init__(self, projector: nn.Sequential, bases: dict[str, torch.Tensor]):
        super().__init__()
        layers: list[nn.Module] = []
        self._low: dict[str, str] = {}
        for i, layer in enumerate(projector):
            key = f"{i}.weight"
            if isinstance(layer, nn.Linear) and key in bases:
                p = layer.weight
                layers.append(_LowRankLinear(p.detach(), None if layer.bias is None else layer.bias.detach(),
                                             bases[key].to(p.device, p.dtype)))
            elif isinstance(layer, nn.Linear):
                new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
                new.load_state_dict(layer.state_dict())
                layers.append(new.to(layer.weight.device, layer.weight.dtype))
            else:
                layers.append(layer)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def trainable_numel(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, _LowRankLinear):
                w, b = layer.weight_bias()
                out[f"{i}.weight"] = w.clone()
                if b is not None:
                    out[f"{i}.bias"] = b
            elif isinstance(layer, nn.Linear):
                out[f"{i}.weight"] = layer.weight.detach().clone()
                if layer.bias is not None:
                    out[f"{i}.bias"] = layer.bias.detach().clone()
        return out


def subspace_numel(projector: nn.Sequential, rank: int) -> int:
    """How many values a silo trains (and DP noises) per step when every weight that
    :func:`public_basis` factors at ``rank`` trains as W_t + U·C: r·n per such m×n weight, the rest
    in full. The dimension DP's σ·√d noise lives in; the whole projector's size without a basis."""
    bases = {f"{i}.weight": torch.zeros(layer.out_features, rank) for i, layer in enumerate(projector)
             if isinstance(layer, nn.Linear) and rank < min(layer.weight.shape)}
    return SubspaceProjector(projector, bases).trainable_numel()


def save_basis(bases: dict[str, torch.Tensor], path, **meta: str) -> str:
    """Write U per weight (m×r) as safetensors, ``meta`` as its string metadata, atomically and readable
    by all (it is public); returns the file's SHA-256."""
    import hashlib

    from safetensors.torch import save

    from fedalign.host.atomic import atomic_write_bytes

    data = save({k: v.detach().float().contiguous().cpu() for k, v in bases.items()},
                metadata={"made_by": "fedalign public basis", **{k: str(v) for k, v in meta.items()}})
    atomic_write_bytes(path, data, 0o644)
    return hashlib.sha256(data).hexdigest()


def load_basis(path, projector_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """A basis file checked against this silo's projector: ``(bases, sha256)``.

    Every tensor must name a 2-D weight of the projector (``"<index>.weight"``), have that weight's
    row count m and 1 ≤ r < min(m, n) columns, be finite and orthonormal (|UᵀU − I| ≤ 1e-3).
    ConfigError naming the file, the tensor and what to do otherwise; nothing is trained before.
    """
    import hashlib
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load

    from fedalign.protocol.errors import ConfigError

    path = Path(path)
    fix = "make it with `silo public-basis` from the run's θ_0 and these models"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"train.public_basis: cannot read {path} ({e.strerror}); {fix}") from None
    try:
        bases = load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ConfigError(f"train.public_basis: {path} is not a safetensors file ({e}); {fix}") from None
    if not bases:
        raise ConfigError(f"train.public_basis: {path} holds no tensors; {fix}")
    for k, U in bases.items():
        w = projector_state.get(k)
        if w is None or w.ndim != 2:
            names = sorted(n for n, v in projector_state.items() if v.ndim == 2)
            raise ConfigError(f"train.public_basis: {path}: tensor {k!r} names no weight matrix of this projector "
                              f"(it has {names}); {fix}")
        m, n = w.shape
        if U.ndim != 2 or U.shape[0] != m or not 1 <= U.shape[1] < min(m, n):
            raise ConfigError(f"train.public_basis: {path}: {k!r} has shape {tuple(U.shape)}; the weight is {m}×{n}, "
                              f"so the basis must be {m}×r with 1 ≤ r < {min(m, n)}; {fix}")
        U64 = U.double()
        if not torch.isfinite(U64).all():
            raise ConfigError(f"train.public_basis: {path}: {k!r} holds NaN or infinite values; {fix}")
        err = float((U64.T @ U64 - torch.eye(U.shape[1], dtype=torch.float64)).abs().max())
        if err > ORTHONORMAL_TOL:
            raise ConfigError(f"train.public_basis: {path}: {k!r}'s columns are not orthonormal (|UᵀU − I| = "
                              f"{err:.3g} > {ORTHONORMAL_TOL:g}); {fix}")
        bases[k] = U.to(w.dtype)
    return bases, hashlib.sha256(data).hexdigest()
