"""LocalTrainer: the delta contract, learning, FedProx, DP rounds, seeds never reaching noise."""

import pytest
import torch

from fedalign.protocol.errors import PrivacyBudgetExceeded
from fedalign.silo.data import Sample
from fedalign.silo.model import IMAGE_TOKEN
from fedalign.silo.privacy import DPSettings, PrivacyAccountant
from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard, train_rounds
from silo_samples import make_samples


@pytest.fixture(scope="module")
def shards(tiny_model):
    def shard(n, seed, **kw):
        return prepare_shard(tiny_model, [Sample(im, IMAGE_TOKEN, c) for im, c in make_samples(n, seed)], **kw)
    return {"train": shard(96, 10), "heldout": shard(32, 11), "small": shard(8, 12)}


def _heldout_loss(model, params, shard):
    model.load_projector_state(params)
    with torch.no_grad():
        f, b = shard.batch(torch.arange(len(shard)))
        return model.loss_per_sample(f, b).mean().item()


def _init(model):
    from fedalign.silo.model import build_projector
    p = build_projector("mlp2x_gelu", 24, 32, generator=torch.Generator().manual_seed(5))
    return {k: v.clone() for k, v in p.state_dict().items()}


def test_round_returns_delta_and_learns(tiny_model, shards):
    theta = _init(tiny_model)
    before = {k: v.clone() for k, v in theta.items()}
    tr = LocalTrainer(tiny_model, TrainSettings(batch_size=16, lr=3e-2, local_epochs=2),
                      generator=torch.Generator().manual_seed(0))
    res = tr.train_round(theta, shards["train"])
    assert all(torch.equal(theta[k], before[k]) for k in theta)  # input untouched
    assert res.n_samples == 96 and res.epsilon is None and res.metrics["steps"] == 12
    torch.testing.assert_close({k: theta[k] + res.delta[k] for k in theta}, tiny_model.projector_state())
    after = {k: theta[k] + res.delta[k] for k in theta}
    assert _heldout_loss(tiny_model, after, shards["heldout"]) < _heldout_loss(tiny_model, theta, shards["heldout"]) - 0.05


def test_same_seed_same_delta_without_dp(tiny_model, shards):
    theta = _init(tiny_model)
    d = [LocalTrainer(tiny_model, TrainSettings(batch_size=8, local_steps=3),
                      generator=torch.Generator().manual_seed(1)).train_round(theta, shards["small"]).delta
         for _ in range(2)]
    torch.testing.assert_close(d[0], d[1])


def test_a_gradient_left_on_the_projector_does_not_enter_the_first_step(tiny_model, shards):
    # another user of the model (a public-gradient probe, an evaluation with grad on) left .grad behind
    theta = _init(tiny_model)

    def delta():
        return LocalTrainer(tiny_model, TrainSettings(batch_size=8, local_steps=3, optimizer="sgd", lr=0.1),
                            generator=torch.Generator().manual_seed(1)).train_round(theta, shards["small"]).delta

    clean = delta()
    for p in tiny_model.projector.parameters():
        p.grad = torch.full_like(p, 100.0)
    torch.testing.assert_close(delta(), clean)


def test_fedprox_pulls_towards_global(tiny_model, shards):
    theta = _init(tiny_model)
    norms = []
    for mu in (0.0, 50.0):
        tr = LocalTrainer(tiny_model, TrainSettings(batch_size=8, local_steps=8, optimizer="sgd", lr=0.02),
                          generator=torch.Generator().manual_seed(2))
        norms.append(sum(v.norm() ** 2 for v in tr.train_round(theta, shards["small"], prox_mu=mu).delta.values()))
    assert norms[1] < 0.5 * norms[0]


def _dp_trainer(model, acc, insecure_seed=None, clipping="ghost"):
    return LocalTrainer(model, TrainSettings(batch_size=4, local_steps=4),
                        dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, clipping=clipping,
                                      insecure_seed=insecure_seed),
                        accountant=acc, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("clipping", ["ghost", "per_sample"])
def test_dp_round_charges_and_reports_epsilon(tiny_model, shards, clipping):
    acc = PrivacyAccountant(50.0, 1e-5)
    res = _dp_trainer(tiny_model, acc, clipping=clipping).train_round(_init(tiny_model), shards["small"])
    assert res.epsilon == pytest.approx(acc.spent) and res.epsilon > 0
    assert res.charge.sample_rate == 0.5 and res.charge.steps == 4
    assert all(torch.isfinite(v).all() for v in res.delta.values())


def test_run_seed_never_reaches_dp_noise(tiny_model, shards):
    theta = _init(tiny_model)
    runs = [_dp_trainer(tiny_model, PrivacyAccountant(50.0, 1e-5)).train_round(theta, shards["small"]).delta
            for _ in range(2)]
    assert not torch.allclose(runs[0]["0.weight"], runs[1]["0.weight"])  # same run seed, fresh noise
    with pytest.warns(RuntimeWarning, match="INSECURE"):
        ins = [_dp_trainer(tiny_model, PrivacyAccountant(50.0, 1e-5), insecure_seed=9).train_round(
            theta, shards["small"]).delta for _ in range(2)]
    torch.testing.assert_close(ins[0], ins[1])


def test_budget_exhaustion_stops_before_training(tiny_model, shards):
    acc = PrivacyAccountant(50.0, 1e-5)
    tr = _dp_trainer(tiny_model, acc)
    acc.epsilon_budget = _dp_trainer(tiny_model, PrivacyAccountant(50.0, 1e-5)).train_round(
        _init(tiny_model), shards["small"]).epsilon * 1.01
    tr.train_round(_init(tiny_model), shards["small"])  # pass 0 fits
    second = prepare_shard(tiny_model, [Sample(im, IMAGE_TOKEN, c) for im, c in make_samples(8, 99)],
                           pass_index=1)
    with pytest.raises(PrivacyBudgetExceeded):
        tr.train_round(_init(tiny_model), second)  # a second pass composes and does not fit
    assert len(acc.charges) == 1


def test_train_rounds_applies_deltas(tiny_model, shards):
    it = iter([shards["small"], shards["small"]])
    tr = LocalTrainer(tiny_model, TrainSettings(batch_size=8, local_steps=2), generator=torch.Generator().manual_seed(4))
    theta, results = train_rounds(tr, _init(tiny_model), lambda: next(it, None), rounds=5)
    assert len(results) == 2
    torch.testing.assert_close(theta, tiny_model.projector_state())


@pytest.mark.parametrize("clipping", ["ghost", "per_sample"])
def test_round_trains_a_projector_left_in_eval_mode(tiny_model, shards, clipping):
    """A caller (evaluation) may leave the projector in eval mode: the round sets train mode itself
    (Opacus records activations only in train mode) and gives the caller's mode back."""
    tiny_model.projector.eval()
    try:
        res = _dp_trainer(tiny_model, PrivacyAccountant(50.0, 1e-5), clipping=clipping).train_round(
            _init(tiny_model), shards["small"])
        assert any(float(v.abs().max()) > 0 for v in res.delta.values())
        assert not tiny_model.projector.training
    finally:
        tiny_model.projector.train()


def _dp_round(model, shard, clip, clipping, steps=4):
    with pytest.warns(RuntimeWarning, match="INSECURE"):  # seeded batches: the two clippings see the same ones
        tr = LocalTrainer(model, TrainSettings(batch_size=4, local_steps=steps),
                          dp=DPSettings(noise_multiplier=1.0, max_grad_norm=clip, clipping=clipping, insecure_seed=4),
                          accountant=PrivacyAccountant(50.0, 1e-5), generator=torch.Generator().manual_seed(3))
        return tr.train_round(_init(model), shard)


@pytest.mark.parametrize("clipping", ["ghost", "per_sample"])
def test_a_clip_far_above_the_gradients_is_named_to_the_operator(tiny_model, shards, clipping):
    from fedalign.silo.privacy import clip_hint

    loose = _dp_round(tiny_model, shards["small"], 1e4, clipping).metrics
    assert 0 < loose["grad_norm_median"] < 1e3 and loose["clipped_fraction"] == 0.0
    hint = clip_hint(loose, 1e4)
    assert hint and "privacy.max_grad_norm = 10000" in hint and "public data" in hint
    tight = _dp_round(tiny_model, shards["small"], 1e-6, clipping).metrics
    assert tight["clipped_fraction"] == 1.0 and clip_hint(tight, 1e-6) is None


def test_ghost_and_materialised_clipping_see_the_same_gradient_norms(tiny_model, shards):
    # one step from the same θ on the same Poisson batch (seeded): Opacus' ghost norms are the norms of
    # the per-sample gradients it would otherwise materialise
    a = _dp_round(tiny_model, shards["small"], 1e4, "ghost", steps=1).metrics["grad_norm_median"]
    b = _dp_round(tiny_model, shards["small"], 1e4, "per_sample", steps=1).metrics["grad_norm_median"]
    assert a == pytest.approx(b, rel=1e-4)
