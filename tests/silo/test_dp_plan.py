"""Noise from the budget (σ derived for the planned schedule), the plan's refusal, Poisson logical
batches run as physical micro-batches, and ε against an independent accountant (dp_accounting)."""

import math

import pytest
import torch

from fedalign.protocol.errors import PrivacyBudgetExceeded
from fedalign.silo.data import Sample
from fedalign.silo.model import IMAGE_TOKEN
from fedalign.silo.privacy import DPSettings, PrivacyAccountant, compute_epsilon, noise_for_budget, plan_dp
from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard
from tests.silo.conftest import make_samples


@pytest.mark.parametrize("eps,q,T,passes", [(8.0, 0.25, 4, 1), (2.0, 0.125, 8, 1), (1.0, 0.5, 2, 1),
                                            (4.0, 0.05, 60, 2)])
def test_noise_for_budget_is_the_smallest_that_fits(eps, q, T, passes):
    sigma = noise_for_budget(eps, 1e-5, q, T, passes=passes)
    spent = compute_epsilon([(sigma, q, T)] * passes, 1e-5)
    assert spent <= eps
    assert compute_epsilon([(sigma * 0.99, q, T)] * passes, 1e-5) > eps  # not needlessly noisy


def test_plan_derives_sigma_and_refuses_an_override_that_cannot_fit():
    plan = plan_dp(8.0, 1e-5, shard_sizes=[1024, 900], batch_size=256, steps_for=lambda n: math.ceil(n / 256),
                   max_grad_norm=1.0, n_params=29_000)
    assert plan.derived and plan.epsilon <= 8.0 and plan.epsilon > 7.8
    assert plan.sample_rate == pytest.approx(256 / 900) and plan.steps == 4  # the dominating schedule
    text = plan.describe()
    assert "σ=" in text and "q=" in text and "4 steps" in text and "epsilon=" in text
    assert "seen 1.14× on average" in text and "1 pass(es) over the data" in text  # local epochs vs data passes
    override = plan_dp(8.0, 1e-5, shard_sizes=[1024], batch_size=256, steps_for=lambda n: 4, max_grad_norm=1.0,
                       noise_multiplier=2.0)
    assert not override.derived and override.noise_multiplier == 2.0
    with pytest.raises(PrivacyBudgetExceeded, match="impossible privacy budget"):
        plan_dp(1.0, 1e-5, shard_sizes=[64], batch_size=32, steps_for=lambda n: 10, max_grad_norm=1.0,
                noise_multiplier=0.5)
    with pytest.raises(PrivacyBudgetExceeded, match="impossible privacy budget: cannot meet"):
        noise_for_budget(0.01, 1e-5, 1.0, 1000, max_noise=5.0)


def test_reported_epsilon_matches_dp_accounting():
    """ε the silo reports (Opacus RDP) against Google's dp_accounting RDP accountant, within 2%."""
    dpa = pytest.importorskip("dp_accounting")
    from dp_accounting import rdp

    for sigma, q, T, passes, delta in [(1.0, 0.25, 4, 1, 1e-5), (0.6, 0.5, 8, 1, 1e-5), (2.0, 0.05, 100, 1, 1e-6),
                                       (noise_for_budget(2.0, 1e-5, 0.25, 8), 0.25, 8, 1, 1e-5),
                                       (1.2, 0.2, 10, 3, 1e-5)]:
        ours = compute_epsilon([(sigma, q, T)] * passes, delta, "rdp")
        acc = rdp.RdpAccountant()
        event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), T * passes)
        theirs = acc.compose(event).get_epsilon(delta)
        assert ours == pytest.approx(theirs, rel=0.02), (sigma, q, T, passes, ours, theirs)


@pytest.fixture(scope="module")
def shard(tiny_model):
    return prepare_shard(tiny_model, [Sample(im, IMAGE_TOKEN, c) for im, c in make_samples(40, 21)])


def _init():
    from fedalign.silo.model import build_projector
    p = build_projector("mlp2x_gelu", 24, 32, generator=torch.Generator().manual_seed(5))
    return {k: v.clone() for k, v in p.state_dict().items()}


@pytest.mark.parametrize("clipping", ["ghost", "per_sample"])
def test_micro_batches_give_the_same_dp_step(tiny_model, shard, clipping):
    """A Poisson logical batch split into physical micro-batches = the same clipped sum, noise, step."""
    theta = _init()
    out = []
    for phys in (None, 3):
        with pytest.warns(RuntimeWarning, match="INSECURE"):
            tr = LocalTrainer(tiny_model, TrainSettings(batch_size=16, local_steps=3, optimizer="sgd", lr=0.5,
                                                        physical_batch_size=phys),
                              dp=DPSettings(noise_multiplier=0.7, max_grad_norm=0.5, clipping=clipping,
                                            insecure_seed=4),
                              accountant=PrivacyAccountant(50.0, 1e-5), generator=torch.Generator().manual_seed(0))
        out.append(tr.train_round(theta, shard))
    assert out[0].metrics["examples_processed"] == out[1].metrics["examples_processed"] > 16
    torch.testing.assert_close(out[0].delta, out[1].delta, rtol=1e-4, atol=1e-6)


def test_micro_batches_give_the_same_plain_step(tiny_model, shard):
    theta = _init()
    deltas = [LocalTrainer(tiny_model, TrainSettings(batch_size=16, local_steps=2, physical_batch_size=phys),
                           generator=torch.Generator().manual_seed(1)).train_round(theta, shard).delta
              for phys in (None, 5)]
    torch.testing.assert_close(deltas[0], deltas[1], rtol=1e-4, atol=1e-6)


def test_trainer_derives_noise_from_budget(tiny_model, shard):
    acc = PrivacyAccountant(4.0, 1e-5)
    tr = LocalTrainer(tiny_model, TrainSettings(batch_size=10, local_epochs=1.0),
                      dp=DPSettings(noise_multiplier=None, max_grad_norm=1.0), accountant=acc)
    plan = tr.plan_dp([40])
    assert plan.derived and plan.sample_rate == 0.25 and plan.steps == 4
    res = tr.train_round(_init(), shard)
    assert res.charge.noise_multiplier == plan.noise_multiplier
    assert 0.97 * 4.0 < res.epsilon <= 4.0  # the budget is spent, not exceeded


def test_micro_batches_group_rows_by_length(tiny_model):
    """Each row once, no part over the bound, and fewer padded tokens through the LM than cutting the
    batch in draw order (the LM runs every row of a micro-batch to that micro-batch's longest row)."""
    shard = prepare_shard(tiny_model, [Sample(im, IMAGE_TOKEN, " ".join([c] * (1 + i % 4)))
                                       for i, (im, c) in enumerate(make_samples(40, 22))])
    idx = torch.randperm(len(shard), generator=torch.Generator().manual_seed(3))[:37]
    parts = shard.micro_batches(idx, 8)
    assert len(parts) == 5 and all(0 < len(p) <= 8 for p in parts)
    assert sorted(torch.cat(parts).tolist()) == sorted(idx.tolist())

    def padded(ps):
        return sum(len(p) * int(shard.lengths[p].max()) for p in ps)

    assert len(set(shard.lengths.tolist())) > 3  # the shard's rows differ in length
    assert padded(parts) < padded(list(idx.split(8)))
    assert shard.micro_batches(idx, None) == [idx] and shard.micro_batches(idx, 64) == [idx]
    assert shard.micro_batches(idx[:0], 8) == []
