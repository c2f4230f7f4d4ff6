"""Subspace training (θ = θ_t + U·C in a public basis): exact reparametrisation, Δ in span(U), DP works."""

import torch

from fedalign.silo.data import Sample
from fedalign.silo.model import IMAGE_TOKEN, build_projector
from fedalign.silo.privacy import PrivacyAccountant
from fedalign.silo.subspace import SubspaceProjector, public_basis, subspace_numel
from fedalign.silo.privacy import DPSettings
from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard
from tests.silo.conftest import make_samples


def _proj(seed):
    return build_projector("mlp2x_gelu", 24, 32, generator=torch.Generator().manual_seed(seed))


def test_public_basis_is_orthonormal_deterministic_and_empty_at_round_zero():
    a, b = _proj(1).state_dict(), _proj(2).state_dict()
    assert public_basis(a, a, 4) == {}
    U = public_basis(b, a, 4)
    assert set(U) == {"0.weight", "2.weight"} and U["0.weight"].shape == (32, 4)
    for u in U.values():
        torch.testing.assert_close(u.T @ u, torch.eye(4), atol=1e-5, rtol=0)
    V = public_basis(b, a, 4)
    assert all(torch.equal(U[k], V[k]) for k in U)


def test_subspace_projector_starts_equal_and_maps_back():
    base, ref = _proj(3), _proj(4)
    U = public_basis(ref.state_dict(), base.state_dict(), 5)
    sp = SubspaceProjector(base, U)
    x = torch.randn(2, 3, 24)
    torch.testing.assert_close(sp(x), base(x))
    assert sp.trainable_numel() == 5 * 24 + 32 + 5 * 32 + 32 == subspace_numel(base, 5)
    assert subspace_numel(base, 32) == sum(p.numel() for p in base.parameters())  # r ≥ min(m, n): in full
    with torch.no_grad():
        for p in sp.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    st = sp.state()
    plain = _proj(0)
    plain.load_state_dict(st)
    torch.testing.assert_close(plain(x), sp(x), rtol=1e-4, atol=1e-5)


def test_dp_round_in_subspace_stays_in_span(tiny_model):
    shard = prepare_shard(tiny_model, [Sample(im, IMAGE_TOKEN, c) for im, c in make_samples(24, 31)])
    theta = {k: v.clone() for k, v in _proj(5).state_dict().items()}
    U = public_basis({k: v.clone() for k, v in _proj(6).state_dict().items()}, theta, 4)
    tr = LocalTrainer(tiny_model, TrainSettings(batch_size=8, local_steps=3, lr=1e-2),
                      dp=DPSettings(noise_multiplier=None, max_grad_norm=1.0), accountant=PrivacyAccountant(8.0, 1e-5))
    res = tr.train_round(theta, shard, basis=U)
    assert res.epsilon <= 8.0 and res.metrics["trained_params"] == 4 * 24 + 32 + 4 * 32 + 32
    for k, u in U.items():
        d = res.delta[k]
        assert d.norm() > 0
        torch.testing.assert_close(u @ (u.T @ d), d, rtol=1e-4, atol=1e-6)  # Δ lies in span(U)
