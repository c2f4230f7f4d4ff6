"""examples/real: its data split and its multiple-choice scorer (against whole-caption likelihoods)."""

import numpy as np
import pytest
import torch

from example_modules import load_example


@pytest.fixture(scope="module")
def real():
    return load_example("real", "run")


def test_split_is_disjoint_skewed_and_seeded(real):
    labels = np.repeat(np.arange(10), 60)
    test, silos = real.split(labels, 3, 120, 5, alpha=0.5, seed=1)
    assert len(test) == 50 and np.bincount(labels[test]).tolist() == [5] * 10
    every = np.concatenate([test, *silos])
    assert len(every) == len(set(every.tolist()))  # no digit in two places
    hist = np.array([np.bincount(labels[s], minlength=10) for s in silos])
    assert (hist.max(0) > 2 * hist.min(0) + 2).sum() >= 5  # label skew: classes concentrate in a silo
    again = real.split(labels, 3, 120, 5, alpha=0.5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(silos, again[1]))


def test_mc_scorer_ranks_like_whole_caption_likelihood(real, tiny_model):
    """Candidates that share every token but the last word: the scorer's log p(word | prefix) must
    order them exactly as the summed caption log-likelihood (without EOS) does."""
    from fedalign.silo.model import IMAGE_TOKEN

    m = tiny_model
    words = ["red", "green", "blue", "yellow"]
    word_ids = torch.tensor([m.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words])
    feats = m.encode_images([np.full((32, 32, 3), 90 + 40 * i, np.uint8) for i in range(3)])
    prompt = IMAGE_TOKEN + " describe :"
    lp = real.mc_logprobs(m, feats, [m.encode_text(prompt, "a big") for _ in range(3)], word_ids)
    with torch.no_grad():
        for i in range(3):
            whole = []
            for w in words:
                t = m.encode_text(prompt, f"a big {w}")
                b = m.collate([t])
                b.target_mask[0, b.attention_mask[0].sum() - 1] = False  # leave EOS out
                n = int(b.target_mask.sum())
                whole.append(-float(m.caption_nll(b, m.project(feats[i : i + 1]))) * n)
            diffs = np.array(whole) - whole[0]
            np.testing.assert_allclose(lp[i].numpy() - lp[i, 0].item(), diffs, atol=1e-4)


def test_dp_round_derives_sigma_from_the_budget_and_trains_in_the_public_subspace(real, tiny_model):
    """The example's DP run: σ comes from (ε, δ) for the silo's whole schedule (no fixed σ), and the
    projector's update lies in the public basis (output layer: the span of the digit words' embeddings)."""
    from fedalign.silo.model import IMAGE_TOKEN
    from fedalign.silo.trainer import ShardData, TrainSettings

    m = tiny_model
    init = m.projector_state()
    word_ids = torch.arange(5, 15)
    basis = real.public_basis(m, word_ids, rank=3, seed=0)
    assert basis["2.weight"].shape == (m.d_model, 10) and basis["0.weight"].shape[1] == 3
    rng = np.random.default_rng(0)
    feats = m.encode_images([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(48)])

    def shard(t):
        texts = [m.encode_text(IMAGE_TOKEN + " :", f"a {w}") for w in ("red", "blue", "green") * 8]
        tok = m.collate(texts)
        return ShardData(feats[24 * t : 24 * (t + 1)], tok, tok.attention_mask.sum(1), 0, t)

    dp = dict(sigma=None, clip=1.0, epsilon=8.0, delta=1e-5)
    fed = real.DigitFederation(m, init, [[shard(0), shard(1)]], None, TrainSettings(batch_size=6, lr=1e-2,
                               local_epochs=2.0), dp, seed=0, basis=basis)
    try:
        res = fed.local_update(init, 0, 0, 0.0)
    finally:
        m.load_projector_state(init)  # the fixture is shared
    assert fed.plan.derived and 0 < fed.plan.noise_multiplier and fed.plan.epsilon <= 8.0
    assert fed.plan.steps == 8 and abs(fed.plan.sample_rate - 0.25) < 1e-9
    assert 0 < fed.epsilon() <= 8.0
    for name, U in basis.items():
        d = res.delta[name]
        assert float(d.norm()) > 0
        assert float((d - U @ (U.T @ d)).norm()) < 1e-4 * float(d.norm())  # inside span(U)
