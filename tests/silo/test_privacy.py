"""DP on the projector: per-sample gradients through the frozen LM, clipping, noise, accounting."""

import math

import pytest
import torch

from fedalign.protocol.errors import PrivacyBudgetExceeded
from fedalign.compliance.entries import read_ledger
from fedalign.compliance.ledger import Ledger
from fedalign.silo.model import IMAGE_TOKEN
from fedalign.silo.privacy import (DPProjectorTrainer, PrivacyAccountant, RoundCharge, compute_epsilon,
                          poisson_batches)
from silo_samples import make_samples


@pytest.fixture()
def batch_and_feats(tiny_model):
    samples = make_samples(5, seed=7)
    samples[2] = (samples[2][0], "a big red square and a small blue dot")  # uneven lengths
    feats = tiny_model.encode_images([im for im, _ in samples])
    texts = [tiny_model.encode_text(IMAGE_TOKEN, c) for _, c in samples]
    return feats, texts


def _loop_grads(model, feats, texts):
    """Reference: each example alone, its own batch, plain autograd through LM and projector."""
    out = []
    for i in range(len(texts)):
        model.projector.zero_grad(set_to_none=True)
        model.loss_per_sample(feats[i : i + 1], model.collate([texts[i]])).sum().backward()
        out.append({n: p.grad.clone() for n, p in model.projector.named_parameters()})
    model.projector.zero_grad(set_to_none=True)
    return out


def test_per_sample_gradients_equal_one_example_at_a_time(tiny_model, batch_and_feats):
    feats, texts = batch_and_feats
    ref = _loop_grads(tiny_model, feats, texts)
    opt = torch.optim.SGD(tiny_model.projector.parameters(), lr=0.0)
    dp = DPProjectorTrainer(tiny_model.projector, opt, noise_multiplier=1.0, max_grad_norm=1.0,
                            expected_batch_size=5, generator=torch.Generator(), clipping="per_sample")
    try:
        batch = tiny_model.collate(texts)
        dp.backward(feats, lambda z: tiny_model.caption_nll(batch, z))
        for name, p in tiny_model.projector.named_parameters():
            for i in range(5):
                torch.testing.assert_close(p.grad_sample[i], ref[i][name], rtol=1e-4, atol=1e-6)
    finally:
        dp.optimizer.zero_grad(set_to_none=True)
        dp.close()


def test_ghost_clipping_sums_clipped_per_sample_gradients(tiny_model, batch_and_feats):
    feats, texts = batch_and_feats
    ref = _loop_grads(tiny_model, feats, texts)
    norms = torch.stack([torch.sqrt(sum((g ** 2).sum() for g in r.values())) for r in ref])
    C = float(norms.median())  # some samples clipped, some not
    assert (norms > C).any() and (norms < C).any()
    opt = torch.optim.SGD(tiny_model.projector.parameters(), lr=0.0)
    dp = DPProjectorTrainer(tiny_model.projector, opt, noise_multiplier=1.0, max_grad_norm=C,
                            expected_batch_size=5, generator=torch.Generator(), clipping="ghost")
    try:
        batch = tiny_model.collate(texts)
        dp.backward(feats, lambda z: tiny_model.caption_nll(batch, z))
        coef = (C / (norms + 1e-6)).clamp(max=1.0)
        for name, p in tiny_model.projector.named_parameters():
            want = sum(coef[i] * ref[i][name] for i in range(5))
            torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)
    finally:
        dp.optimizer.zero_grad(set_to_none=True)
        dp.close()
    assert not hasattr(tiny_model.projector[0].weight, "grad_sample") or \
        tiny_model.projector[0].weight.grad_sample is None


def test_poisson_batches_rate():
    g = torch.Generator().manual_seed(0)
    b = poisson_batches(1000, 0.05, 200, g)
    sizes = torch.tensor([len(x) for x in b], dtype=torch.float)
    assert len(b) == 200
    # mean of 200 Binomial(1000, .05): sd of the mean ~ 0.49
    assert abs(sizes.mean().item() - 50) < 2.5
    assert all(len(x.unique()) == len(x) for x in b)


def test_disjoint_shards_compose_in_parallel_passes_sequentially(tmp_path):
    acc = PrivacyAccountant(10.0, 1e-5, state_path=tmp_path / "acc.json", ledger=Ledger(tmp_path / "l.jsonl"))
    c = dict(noise_multiplier=1.1, sample_rate=0.1, steps=20)
    one = compute_epsilon([(1.1, 0.1, 20)], 1e-5)
    for k in range(4):
        eps = acc.charge(RoundCharge(**c, pass_index=0, shard_index=k), now=float(k))
    assert eps == pytest.approx(one)  # four disjoint shards cost what one does
    eps2 = acc.charge(RoundCharge(**c, pass_index=1, shard_index=4), now=5.0)
    assert eps2 == pytest.approx(compute_epsilon([(1.1, 0.1, 20)] * 2, 1e-5))
    assert eps2 > one * 1.2
    # a worse shard in a pass raises that pass's cost
    eps3 = acc.charge(RoundCharge(1.1, 0.2, 20, pass_index=1, shard_index=5), now=6.0)
    assert eps3 == pytest.approx(compute_epsilon([(1.1, 0.1, 20), (1.1, 0.2, 20)], 1e-5))
    # state survives a restart; the ledger holds one entry per charge
    again = PrivacyAccountant(10.0, 1e-5, state_path=tmp_path / "acc.json")
    assert again.spent == pytest.approx(eps3)
    led = read_ledger(tmp_path / "l.jsonl")
    assert [e.kind for e in led] == ["privacy_charge"] * 6
    assert led[-1].fields["epsilon_spent"] == pytest.approx(eps3)


def test_rdp_against_prv_accountant():
    h = [(1.0, 0.05, 100)]
    rdp, prv = compute_epsilon(h, 1e-5, "rdp"), compute_epsilon(h, 1e-5, "prv")
    assert prv <= rdp * 1.05 and prv > rdp * 0.5  # PRV is tighter, same ballpark


def test_budget_exceeded_is_raised_before_commit(tmp_path):
    acc = PrivacyAccountant(1.0, 1e-5, state_path=tmp_path / "a.json")
    assert acc.check_feasible(RoundCharge(3.0, 0.05, 100)) < 1.0
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        for p in range(10):
            acc.charge(RoundCharge(3.0, 0.05, 100, pass_index=p))
    spent = acc.spent
    assert spent <= 1.0
    assert PrivacyAccountant(1.0, 1e-5, state_path=tmp_path / "a.json").spent == pytest.approx(spent)


def test_impossible_budget_is_one_clear_error():
    acc = PrivacyAccountant(0.01, 1e-5)
    with pytest.raises(PrivacyBudgetExceeded, match="impossible privacy budget"):
        acc.check_feasible(RoundCharge(1.0, 0.5, 10))
    assert math.isfinite(PrivacyAccountant(50.0, 1e-5).check_feasible(RoundCharge(1.0, 0.5, 10)))
