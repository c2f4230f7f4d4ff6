"""Likelihood evaluation against a direct per-item computation, and the presence metrics."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fedalign.silo.data import Sample
from fedalign.silo.evaluate import evaluate, prepare_eval, presence_metrics
from fedalign.silo.model import IMAGE_TOKEN
from silo_samples import make_samples


@dataclass(frozen=True)
class Item:
    kind: str
    image: object
    prompt: str
    candidates: tuple
    answer: int


def _items():
    s = make_samples(6, seed=21)
    items = []
    for i, (im, cap) in enumerate(s):
        others = [c for _, c in s if c != cap][:3]
        items.append(Item("caption_mc", np.asarray(im), IMAGE_TOKEN, (others[0], cap, *others[1:]), 1))
        items.append(Item("presence", np.asarray(im), IMAGE_TOKEN + " is there a red square", ("yes", "no"), i % 2))
        items.append(Item("colour", np.asarray(im), IMAGE_TOKEN + " colour", ("red", "green", "blue"), 0))
    return s, items


def test_metrics_match_direct_scoring(tiny_model):
    s, items = _items()
    ev = prepare_eval(tiny_model, [Sample(im, IMAGE_TOKEN, c) for im, c in s], items, batch_size=5)
    m = evaluate(tiny_model, ev, batch_size=7)
    # direct: one item, one candidate at a time
    preds = {}
    with torch.no_grad():
        feats = tiny_model.encode_images([it.image for it in items])
        for i, it in enumerate(items):
            nll = [tiny_model.loss_per_sample(feats[i : i + 1], tiny_model.collate(
                [tiny_model.encode_text(it.prompt, c)])).item() for c in it.candidates]
            preds.setdefault(it.kind, []).append(int(np.argmin(nll)) == it.answer)
        caps = [tiny_model.loss_per_sample(tiny_model.encode_images([im]), tiny_model.collate(
            [tiny_model.encode_text(IMAGE_TOKEN, c)])).item() for im, c in s]
    assert m["mc_accuracy"] == pytest.approx(np.mean(preds["caption_mc"]))
    assert m["colour_accuracy"] == pytest.approx(np.mean(preds["colour"]))
    assert m["presence_accuracy"] == pytest.approx(np.mean(preds["presence"]))
    assert m["heldout_nll"] == pytest.approx(np.mean(caps), rel=1e-5)
    assert m["n_caption_mc"] == 6 and 0 <= m["presence_yes_rate"] <= 1
    assert m["nll_reduction_vs_text_only"] == pytest.approx(1 - m["heldout_nll"] / m["heldout_nll_text_only"])


def test_presence_metrics_known_answer():
    pred = np.array([1, 1, 0, 0, 1], bool)
    true = np.array([1, 0, 0, 1, 1], bool)
    m = presence_metrics(pred, true)
    assert m == pytest.approx({"presence_accuracy": 0.6, "presence_f1": 2 * 2 / (2 * 2 + 1 + 1),
                               "presence_yes_rate": 0.6})
