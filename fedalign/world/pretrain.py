"""Pretraining of the world's two frozen models, deterministic given the spec's seed.

- Vision: a ViT learns, for every patch token, the symbolic prefix word that stands at that
  patch (size, colour, shape or background of its quadrant), with one head on the layer
  LLaVA selects (-2) and one on the last layer.
- Language: a Llama learns captions and probe answers preceded by the symbolic prefix at
  the place where image tokens will stand; in a share of texts the prefix is replaced by
  placeholders or left out, so the same LM also serves as the text-only baseline.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, ViTConfig, ViTModel

from .probes import attribute_question, presence_question
from .scene import IMAGE_SIZE, Scene
from .spec import WorldSpec
from .text import (
    CAPTION_PROMPT,
    CAPTION_STYLES,
    EOS_TOKEN,
    IMAGE_TOKEN,
    N_IMAGE_TOKENS,
    PLACEHOLDER_TOKEN,
    PREFIX_WORDS,
    caption,
    scene_prefix,
)

__all__ = [
    "PATCH_SIZE",
    "image_processor",
    "pixel_values",
    "pretrain_vision",
    "lm_example",
    "pretrain_lm",
]

PATCH_SIZE = 8
try:  # transformers 5 without torchvision: the PIL backend, same output, no fallback warning
    from transformers import ViTImageProcessorPil as _Processor
except ImportError:  # transformers 4
    from transformers import ViTImageProcessor as _Processor
_MEAN = _STD = 0.5


def image_processor():
    """The processor saved beside the ViT: 32x32, scaled to [0, 1], normalised by 0.5/0.5."""
    return _Processor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[_MEAN] * 3,
        image_std=[_STD] * 3,
    )


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """``(N, 32, 32, 3)`` uint8 -> ``(N, 3, 32, 32)`` float, as ``image_processor()`` does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.sub_(_MEAN).div_(_STD).permute(0, 3, 1, 2).contiguous()


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain_vision(
    spec: WorldSpec, scenes: list[Scene], images: np.ndarray, generator: torch.Generator
) -> tuple[ViTModel, dict[str, float]]:
    """Train a ViT to name the prefix word of every patch; returns the encoder (heads
    dropped) and its training figures over the last tenth of the steps."""
    config = ViTConfig(
        hidden_size=spec.vit_hidden,
        num_hidden_layers=spec.vit_layers,
        num_attention_heads=spec.vit_heads,
        intermediate_size=spec.vit_intermediate,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ViTModel(config)  # with its (unused) pooler, so AutoModel finds every weight
    heads = nn.ModuleList([nn.Linear(spec.vit_hidden, len(PREFIX_WORDS)) for _ in range(2)])
    index = {w: i for i, w in enumerate(PREFIX_WORDS)}
    targets = torch.tensor([[index[w] for w in scene_prefix(s)] for s in scenes])
    pixels = pixel_values(images)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=spec.vision_lr, weight_decay=0.01)
    model.train()
    tail = max(1, spec.vision_steps // 10)
    hits = total = 0.0
    loss_tail = 0.0
    for step in range(spec.vision_steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, spec.vision_steps, spec.vision_lr, max(1, spec.vision_steps // 20))
        idx = torch.randint(len(scenes), (spec.vision_batch,), generator=generator)
        out = model(pixel_values=pixels[idx], output_hidden_states=True)
        feats = (out.hidden_states[-2][:, 1:], out.last_hidden_state[:, 1:])
        logits = heads[0](feats[0])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets[idx].flatten())
        loss = loss + nn.functional.cross_entropy(heads[1](feats[1]).flatten(0, 1), targets[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= spec.vision_steps - tail:
            hits += float((logits.argmax(-1) == targets[idx]).float().sum())
            total += targets[idx].numel()
            loss_tail += float(loss.detach()) / tail
    model.eval()
    return model, {"vision_patch_accuracy_layer_-2": hits / max(total, 1.0), "vision_loss": loss_tail}


def _qa(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.4:
        q = presence_question(scene, rng, positive=bool(rng.random() < 0.5))
    else:
        q = attribute_question(scene, rng)
    return q.prompt, q.target


def lm_example(
    scene: Scene, spec: WorldSpec, rng: np.random.Generator
) -> tuple[list[str], list[bool], list[bool]]:
    """One pretraining text as words, which words are scored (completions and ``</s>``),
    and which are symbolic prefix words (the ones that image tokens will replace).

    The prompt's ``<image>`` becomes the symbolic prefix (with some words dropped to
    ``<ph>``), all placeholders, or nothing; a caption or answer follows, then
    ``spec.lm_extra_qa`` more question-answer pairs about the same scene, each closed by
    ``</s>`` (more probe signal per prefix; the first segment alone is the evaluation form).
    """
    if rng.random() < spec.qa_share:
        prompt, completion = _qa(scene, rng)
    else:
        prompt, completion = CAPTION_PROMPT, caption(scene, CAPTION_STYLES[rng.integers(len(CAPTION_STYLES))])
    u = rng.random()
    if u < spec.p_no_prefix:
        prefix: list[str] = []
    elif u < spec.p_no_prefix + spec.p_placeholder_prefix:
        prefix = [PLACEHOLDER_TOKEN] * N_IMAGE_TOKENS
    else:
        drop = rng.random(N_IMAGE_TOKENS) < spec.p_token_dropout
        prefix = [PLACEHOLDER_TOKEN if d else w for w, d in zip(scene_prefix(scene), drop)]
    head, _, tail = prompt.partition(IMAGE_TOKEN)
    context = head.split() + prefix + tail.split()
    words = context + completion.split() + [EOS_TOKEN]
    scored = [False] * len(context) + [True] * (len(words) - len(context))
    for _ in range(spec.lm_extra_qa):
        q_prompt, answer = _qa(scene, rng)
        question = q_prompt.replace(IMAGE_TOKEN, "").split()
        words += question + answer.split() + [EOS_TOKEN]
        scored += [False] * len(question) + [True] * (len(answer.split()) + 1)
    n_head = len(head.split())
    is_prefix = [n_head <= i < n_head + len(prefix) and w != PLACEHOLDER_TOKEN for i, w in enumerate(words)]
    return words, scored, is_prefix


def pretrain_lm(
    spec: WorldSpec,
    scenes: list[Scene],
    tokenizer: PreTrainedTokenizerBase,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> tuple[LlamaForCausalLM, dict[str, float]]:
    """Train a small Llama on prefixed captions and Q/A; loss on completions and ``</s>``.
    Returns the LM and its mean training loss over the last tenth of the steps."""
    vocab = tokenizer.get_vocab()
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=spec.lm_hidden,
        num_hidden_layers=spec.lm_layers,
        num_attention_heads=spec.lm_heads,
        num_key_value_heads=spec.lm_heads,
        intermediate_size=spec.lm_intermediate,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=spec.lm_tie_embeddings,
        attention_dropout=0.0,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lm_lr, weight_decay=0.01)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    model.train()
    tail = max(1, spec.lm_steps // 10)
    loss_tail = 0.0
    for step in range(spec.lm_steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(step, spec.lm_steps, spec.lm_lr, max(1, spec.lm_steps // 20))
        idx = torch.randint(len(scenes), (spec.lm_batch,), generator=generator).tolist()
        rows, labels, prefix_rows = [], [], []
        for i in idx:
            words, scored, is_prefix = lm_example(scenes[i], spec, rng)
            ids = [bos] + [vocab[w] for w in words]
            rows.append(ids)
            labels.append([-100] + [t if keep else -100 for t, keep in zip(ids[1:], scored)])
            prefix_rows.append([False] + is_prefix)
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), pad)
        target = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        noisy = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (ids, lab, pre) in enumerate(zip(rows, labels, prefix_rows)):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            target[r, : len(lab)] = torch.tensor(lab)
            mask[r, : len(ids)] = 1
            noisy[r, : len(pre)] = torch.tensor(pre)
        embed = model.get_input_embeddings()
        embeds = embed(input_ids)
        if spec.prefix_noise > 0:  # read approximate prefix words, as projected images will be
            scale = embed.weight.detach().pow(2).mean().sqrt() * spec.prefix_noise
            sigma = torch.rand((len(rows), 1, 1), generator=generator) * scale
            noise = torch.randn(embeds.shape, generator=generator) * sigma
            embeds = embeds + noise * noisy.unsqueeze(-1)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), target[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= spec.lm_steps - tail:
            loss_tail += float(loss.detach()) / tail
    model.eval()
    return model, {"lm_loss": loss_tail}
