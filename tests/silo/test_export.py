"""Exports load in the real consumers: HF LlavaForConditionalGeneration, and LLaVA's key layout."""

import pytest
import torch
from safetensors.torch import load_file

from fedalign.protocol.errors import ConfigError
from fedalign.silo.export import export_projector, load_projector_file, to_hf_llava_layout
from fedalign.silo.model import VisionTower, build_projector
from silo_samples import make_samples


def test_hf_llava_loads_our_projector_and_matches(tmp_path):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=48, image_size=32, patch_size=8).to_dict(),
        text_config=LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, num_key_value_heads=2).to_dict(),
        image_token_index=39, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(tmp_path / "llava")
    ours = build_projector("mlp2x_gelu", 24, 32, generator=torch.Generator().manual_seed(1))
    files = export_projector(ours.state_dict(), tmp_path / "export")
    # splice our file into the checkpoint, then load through from_pretrained
    ckpt = load_file(tmp_path / "llava" / "model.safetensors")
    ours_hf = load_file(files["hf_llava"])
    assert set(ours_hf) <= set(ckpt)
    ckpt.update(ours_hf)
    from safetensors.torch import save_file
    save_file(ckpt, tmp_path / "llava" / "model.safetensors", metadata={"format": "pt"})
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tower = VisionTower(llava.model.vision_tower, proc, select_layer=-2, select_feature="patch")
    pv = tower.preprocess([im for im, _ in make_samples(2, seed=0)])
    with torch.no_grad():
        theirs = llava.model.get_image_features(pixel_values=pv, vision_feature_layer=-2,
                                                vision_feature_select_strategy="default")
        theirs = theirs.pooler_output if hasattr(theirs, "pooler_output") else theirs
        theirs = torch.cat(list(theirs)) if isinstance(theirs, (list, tuple)) else theirs
        mine = ours(tower(pv)).reshape(theirs.shape)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,keys", [
    ("mlp2x_gelu", {"model.mm_projector.0.weight", "model.mm_projector.0.bias",
                    "model.mm_projector.2.weight", "model.mm_projector.2.bias"}),
    ("linear", {"model.mm_projector.weight", "model.mm_projector.bias"}),
])
def test_llava_layout_keys_and_roundtrip(tmp_path, kind, keys):
    p = build_projector(kind, 8, 16, generator=torch.Generator().manual_seed(2)).state_dict()
    files = export_projector(p, tmp_path)
    assert set(load_file(files["llava"])) == keys
    torch.testing.assert_close(load_projector_file(files["llava"]), p)
    assert ("hf_llava" in files) == (kind == "mlp2x_gelu")
    if kind == "linear":
        with pytest.raises(ConfigError):
            to_hf_llava_layout(p)
