"""Evaluation by the frozen LM's likelihood: held-out caption NLL and candidate-scoring probes.

Generic over items that carry ``image``, ``prompt`` (with ``<image>``), ``candidates`` and the
index of the right one (``answer`` or ``correct``), plus an optional ``kind``. The model picks
the candidate with the lowest NLL. Kinds: ``caption_mc`` (multiple-choice captions),
``presence`` (yes/no: accuracy, F1 of "yes", yes-rate), anything else is an attribute probe
(accuracy per kind). Tower features are computed once (:func:`prepare_eval`) and reused across
evaluations, since only the projector changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fedalign.silo.data import Sample, open_image
from fedalign.silo.model import IMAGE_TOKEN, AlignmentModel, EncodedText

__all__ = ["EvalSet", "prepare_eval", "evaluate", "remove_image", "presence_metrics", "no_image_metrics",
           "caption_nlls"]


def remove_image(prompt: str) -> str:
    """The text-only form of a prompt for a generic LM: the image marker dropped."""
    return prompt.replace(IMAGE_TOKEN, "")


def _image(x: Any, origin: str = ""):
    return x if isinstance(x, np.ndarray) else open_image(x, origin)


def _answer(item: Any) -> int:
    return int(getattr(item, "answer", getattr(item, "correct", -1)))


@dataclass
class _Scored:
    """Rows to score: which feature row each uses, its tokens, and its text-only tokens."""

    feat_row: torch.Tensor
    texts: list[EncodedText]
    texts_plain: list[EncodedText]


@dataclass
class EvalSet:
    """Held-out captions and probe items, with tower features cached."""

    caption_feats: torch.Tensor
    captions: _Scored
    item_feats: torch.Tensor
    items: _Scored
    item_kinds: list[str]
    item_answers: list[int]
    item_offsets: list[tuple[int, int]]  # candidate rows of item i: [a, b)
    yes_index: list[int]  # index of the "yes" candidate for presence items, else -1


def _encode(model: AlignmentModel, prompt: str, target: str, text_only: Callable[[str], str]):
    full = model.encode_text(prompt, target)
    plain_prompt = text_only(prompt)
    # the text-only form has no image slot; encode around a marker placed at its end
    plain = model.encode_text(plain_prompt + IMAGE_TOKEN, target)
    return full, EncodedText(plain.pre + plain.post, (), plain.caption)


def prepare_eval(model: AlignmentModel, samples: Sequence[Sample], items: Sequence[Any] = (), *,
                 text_only_prompt: Callable[[str], str] = remove_image, batch_size: int = 64) -> EvalSet:
    """Cache tower features and tokens for held-out ``samples`` and probe ``items``.

    ``text_only_prompt`` maps a prompt to the LM's no-image form (the embedded world passes its
    placeholder form; a generic LM drops the marker).
    """
    cf = model.encode_images([_image(s.image, s.origin) for s in samples], batch_size)
    ct, cp = zip(*[_encode(model, s.prompt, s.caption, text_only_prompt) for s in samples]) if samples else ((), ())
    caps = _Scored(torch.arange(len(samples)), list(ct), list(cp))
    feats = model.encode_images([_image(it.image) for it in items], batch_size)
    rows, texts, plain, kinds, answers, offsets, yes = [], [], [], [], [], [], []
    for i, it in enumerate(items):
        a = len(texts)
        for cand in it.candidates:
            f, p = _encode(model, it.prompt, cand, text_only_prompt)
            rows.append(i)
            texts.append(f)
            plain.append(p)
        offsets.append((a, len(texts)))
        kind = str(getattr(it, "kind", "mc") or "mc")
        kinds.append(kind)
        ans = _answer(it)
        if not 0 <= ans < len(it.candidates):
            raise ValueError(f"eval item {i}: answer index {ans} outside its {len(it.candidates)} candidates")
        answers.append(ans)
        low = [c.strip().lower() for c in it.candidates]
        yes.append(low.index("yes") if kind == "presence" and "yes" in low else -1)
    return EvalSet(cf, caps, feats, _Scored(torch.tensor(rows, dtype=torch.long), texts, plain),
                   kinds, answers, offsets, yes)


@torch.no_grad()
def _nll(model: AlignmentModel, feats: torch.Tensor, scored: _Scored, *, with_image: bool,
         length_normalize: bool, batch_size: int) -> torch.Tensor:
    out = []
    texts = scored.texts if with_image else scored.texts_plain
    for a in range(0, len(texts), batch_size):
        chunk = texts[a : a + batch_size]
        batch = model.collate(chunk, with_image=with_image)
        img = model.project(feats[scored.feat_row[a : a + batch_size].to(feats.device)]) if with_image else None
        nll = model.caption_nll(batch, img)
        if not length_normalize:
            nll = nll * batch.target_mask.sum(1)
        out.append(nll.float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def caption_nlls(model: AlignmentModel, ev: EvalSet, *, batch_size: int = 64) -> torch.Tensor:
    """Each held-out caption's token-mean NLL with the image, in the order of the held-out samples."""
    was_training = model.projector.training
    model.projector.eval()
    try:
        return _nll(model, ev.caption_feats, ev.captions, with_image=True, length_normalize=True,
                    batch_size=batch_size)
    finally:
        model.projector.train(was_training)


def presence_metrics(pred_yes: np.ndarray, true_yes: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 of the "yes" class and the rate of "yes" answers."""
    tp = float(np.sum(pred_yes & true_yes))
    fp = float(np.sum(pred_yes & ~true_yes))
    fn = float(np.sum(~pred_yes & true_yes))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0
    return {"presence_accuracy": float(np.mean(pred_yes == true_yes)), "presence_f1": f1,
            "presence_yes_rate": float(np.mean(pred_yes))}


def evaluate(model: AlignmentModel, ev: EvalSet, *, batch_size: int = 64, length_normalize: bool = True,
             text_only_baseline: bool = True) -> dict[str, float]:
    """All metrics for the model's current projector (the baseline needs no projector)."""
    was_training = model.projector.training
    model.projector.eval()
    try:
        m: dict[str, float] = {}
        if len(ev.captions.texts):
            m["heldout_nll"] = float(caption_nlls(model, ev, batch_size=batch_size).mean())
            if text_only_baseline:
                base = float(_nll(model, ev.caption_feats, ev.captions, with_image=False,
                                  length_normalize=True, batch_size=batch_size).mean())
                m["heldout_nll_text_only"] = base
                m["nll_reduction_vs_text_only"] = 1.0 - m["heldout_nll"] / base
            m["n_heldout"] = float(len(ev.captions.texts))
        if ev.item_offsets:
            scores = _nll(model, ev.item_feats, ev.items, with_image=True,
                          length_normalize=length_normalize, batch_size=batch_size)
            preds = [int(torch.argmin(scores[a:b])) for a, b in ev.item_offsets]
            by_kind: dict[str, list[bool]] = {}
            for k, p, y in zip(ev.item_kinds, preds, ev.item_answers):
                by_kind.setdefault(k, []).append(p == y)
            for k, hits in sorted(by_kind.items()):
                name = "mc_accuracy" if k in ("caption_mc", "mc") else f"{k}_accuracy"
                m[name] = float(np.mean(hits))
                m[f"n_{k}"] = float(len(hits))
            pres = [i for i, y in enumerate(ev.yes_index) if y >= 0]
            if pres:
                pred_yes = np.array([preds[i] == ev.yes_index[i] for i in pres])
                true_yes = np.array([ev.item_answers[i] == ev.yes_index[i] for i in pres])
                m.update(presence_metrics(pred_yes, true_yes))
        return m
    finally:
        model.projector.train(was_training)


@torch.no_grad()
def no_image_metrics(model: AlignmentModel, ev: EvalSet, *, batch_size: int = 64,
                     length_normalize: bool = True) -> dict[str, float]:
    """The same frozen LM with no image (its text-only prompt form): held-out caption NLL and
    multiple-choice accuracy, the level a projector must beat to have learned anything."""
    m: dict[str, float] = {}
    if len(ev.captions.texts):
        m["heldout_nll_no_image"] = float(_nll(model, ev.caption_feats, ev.captions, with_image=False,
                                               length_normalize=True, batch_size=batch_size).mean())
    if ev.item_offsets:
        scores = _nll(model, ev.item_feats, ev.items, with_image=False, length_normalize=length_normalize,
                      batch_size=batch_size)
        hits = [int(torch.argmin(scores[a:b])) == y for (a, b), y, k in
                zip(ev.item_offsets, ev.item_answers, ev.item_kinds) if k in ("caption_mc", "mc")]
        if hits:
            m["mc_accuracy_no_image"] = float(np.mean(hits))
    return m
