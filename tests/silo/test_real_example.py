"""examples/real: its data split and its multiple-choice scorer (against whole-caption likelihoods)."""

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real():
    import importlib.util

    spec = importlib.util.spec_from_file_location("examples_real_run", ROOT / "examples" / "real" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # under its own name: other examples have a run.py too
    return mod


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
