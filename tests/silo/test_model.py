"""Model assembly: towers of three families, feature selection, per-sample loss, errors."""

import pytest
import torch

from fedalign.protocol.errors import ModelLoadError
from fedalign.silo.model import (IMAGE_TOKEN, build_projector, collate, encode_text, load_llm, load_vision_tower)
from silo_samples import make_samples


@pytest.mark.parametrize("family,has_cls", [("vit", True), ("clip", True), ("siglip", False)])
def test_tower_families_and_feature_select(tiny_dir, family, has_cls):
    tower = load_vision_tower(str(tiny_dir / family), device="cpu")
    assert tower.has_cls is has_cls
    imgs = [im for im, _ in make_samples(2, seed=0)]
    pv = tower.preprocess(imgs)
    feats = tower(pv)
    assert feats.shape == (2, 16, 24)
    # the features are hidden_states[-2] without CLS, computed independently here
    hs = tower.model(pixel_values=pv, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(feats, hs[:, 1:] if has_cls else hs)
    keep = load_vision_tower(str(tiny_dir / family), device="cpu", select_feature="cls_patch", select_layer=-1)
    assert keep(pv).shape[1] == (17 if has_cls else 16)
    torch.testing.assert_close(keep(pv), tower.model(pixel_values=pv, output_hidden_states=True).hidden_states[-1])


def test_wrong_paths_name_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-tower"):
        load_vision_tower(str(tmp_path / "no-such-tower"), device="cpu")
    with pytest.raises(ModelLoadError, match="no-such-llm"):
        load_llm(str(tmp_path / "no-such-llm"), device="cpu")


def test_a_language_model_is_not_a_tower(tiny_dir):
    with pytest.raises(ModelLoadError, match="vision tower .*llama"):
        load_vision_tower(str(tiny_dir / "llama"), device="cpu")


def test_projector_layouts():
    g = torch.Generator().manual_seed(0)
    assert sorted(build_projector("mlp2x_gelu", 8, 16, generator=g).state_dict()) == \
        ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert sorted(build_projector("linear", 8, 16, generator=g).state_dict()) == ["0.bias", "0.weight"]
    a = build_projector("linear", 8, 16, generator=torch.Generator().manual_seed(3)).state_dict()
    b = build_projector("linear", 8, 16, generator=torch.Generator().manual_seed(3)).state_dict()
    torch.testing.assert_close(a, b)


def test_image_slots_and_targets(tiny_model):
    tok = tiny_model.tokenizer
    t = encode_text(tok, f"describe :\n{IMAGE_TOKEN}", "a big red square")
    assert t.pre[0] == tok.bos_token_id and t.caption[-1] == tok.eos_token_id
    b = collate([t, encode_text(tok, IMAGE_TOKEN, "a dot")], 16, tiny_model.pad_id)
    assert b.image_mask.sum(1).tolist() == [16, 16]
    assert b.target_mask.sum(1).tolist() == [5, 3]  # caption words + EOS
    assert not (b.image_mask & b.target_mask).any()
    with pytest.raises(ValueError):
        encode_text(tok, "no marker", "a dot")


def test_per_sample_loss_is_token_mean_not_batch_mean(tiny_model):
    """Each row's loss equals that sample alone, via the LM's own logits (independent path)."""
    samples = make_samples(3, seed=2)
    samples[1] = (samples[1][0], "a big red square a small blue dot a big green bar")  # longer caption
    feats = tiny_model.encode_images([im for im, _ in samples])
    texts = [tiny_model.encode_text(IMAGE_TOKEN, c) for _, c in samples]
    batch = tiny_model.collate(texts)
    with torch.no_grad():
        losses = tiny_model.loss_per_sample(feats, batch)
        for i in range(3):
            one = tiny_model.collate([texts[i]])
            emb = tiny_model.llm.get_input_embeddings()(one.input_ids)
            emb[one.image_mask] = tiny_model.project(feats[i : i + 1]).reshape(-1, emb.shape[-1])
            logits = tiny_model.llm(inputs_embeds=emb).logits[0, :-1]
            m = one.target_mask[0, 1:]
            ref = torch.nn.functional.cross_entropy(logits[m], one.input_ids[0, 1:][m])
            torch.testing.assert_close(losses[i], ref, rtol=1e-5, atol=1e-5)
    # and differs from the HF-style token-weighted batch mean because lengths differ
    tokmean = (losses * batch.target_mask.sum(1)).sum() / batch.target_mask.sum()
    assert not torch.isclose(losses.mean(), tokmean)


def test_feature_cache_matches_fresh_forward(tiny_model):
    imgs = [im for im, _ in make_samples(5, seed=4)]
    cached = tiny_model.encode_images(imgs, batch_size=2)
    fresh = torch.cat([tiny_model.vision(tiny_model.vision.preprocess([im])) for im in imgs])
    torch.testing.assert_close(cached, fresh)
