"""Tiny real HF models built from configs, saved and loaded back through from_pretrained.

Session-scoped: a ViT / CLIP / SigLIP tower, a 2-layer Llama with a word-level tokenizer, and
a small procedural image-caption set (coloured shapes) written as files in both data formats.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from silo_samples import _tokenizer, make_samples


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
