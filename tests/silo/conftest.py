"""Tiny real HF models built from configs, saved and loaded back through from_pretrained.

Session-scoped: a ViT / CLIP / SigLIP tower, a 2-layer Llama with a word-level tokenizer, and
a small procedural image-caption set (coloured shapes) written as files in both data formats.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "bar", "dot")
WORDS = ["a", "an", "image", "of", "big", "small", "is", "there", "yes", "no", "describe", ":",
         *COLOURS, *SHAPES]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def make_image(colour: str, shape: str, size: str, rng: np.random.Generator) -> Image.Image:
    a = np.full((32, 32, 3), 128, np.uint8) + rng.integers(0, 20, (32, 32, 3), dtype=np.uint8)
    s = 14 if size == "big" else 7
    y, x = rng.integers(0, 32 - s, 2)
    h, w = {"square": (s, s), "bar": (max(2, s // 3), s), "dot": (max(2, s // 2), max(2, s // 2))}[shape]
    a[y : y + h, x : x + w] = COLOURS[colour]
    return Image.fromarray(a)


def make_samples(n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = list(COLOURS)[rng.integers(len(COLOURS))]
        s = SHAPES[rng.integers(len(SHAPES))]
        z = ("big", "small")[rng.integers(2)]
        out.append((make_image(c, s, z, rng), f"a {z} {c} {s}"))
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from transformers import (CLIPVisionConfig, CLIPVisionModel, CLIPImageProcessor, LlamaConfig,
                              LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel, ViTConfig,
                              ViTImageProcessor, ViTModel)

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=48, image_size=32, patch_size=8), add_pooling_layer=False)
    vit.save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=48, image_size=32, patch_size=8,
                                            projection_dim=24))
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    sig = SiglipVisionModel(SiglipVisionConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=48, image_size=32, patch_size=8))
    sig.save_pretrained(root / "siglip")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    tok = _tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id, max_position_embeddings=128))
    llm.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from fedalign.silo.model import load_alignment_model

    return load_alignment_model(str(tiny_dir / "vit"), str(tiny_dir / "llama"), device="cpu",
                                generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def data_files(tmp_path_factory):
    """64 image files with a JSONL and a LLaVA JSON index over them."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    rows = []
    for i, (im, cap) in enumerate(make_samples(64, seed=1)):
        name = f"img/{i:03d}.png"
        im.save(root / name)
        rows.append((name, cap))
    (root / "train.jsonl").write_text("".join(json.dumps({"image": n, "caption": c}) + "\n" for n, c in rows))
    llava = [{"id": str(i), "image": n, "conversations": [
        {"from": "human", "value": "describe :\n<image>"}, {"from": "gpt", "value": c}]}
        for i, (n, c) in enumerate(rows)]
    (root / "train.json").write_text(json.dumps(llava, indent=1))
    return root
