"""The LLaVA stage-1 model: frozen vision tower -> trainable projector -> frozen causal LM.

Only the projector trains. The vision tower is frozen and in eval mode, so its features are a
pure function of the image and can be computed once per shard and cached (``encode_images``).
The caption loss is computed per sample (token mean over that sample's caption) and only then
averaged, which is what per-sample DP gradients need; Hugging Face's ``labels=`` loss averages
over all tokens of the batch instead. Image features replace the ``<image>`` marker of the
prompt; the marker is split out of the text, so any tokenizer works without a new token.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedalign.projector import PROJECTOR_KINDS, init_projector, projector_shapes
from fedalign.silo.towers import FrozenTower
from fedalign.protocol.errors import ConfigError, ModelLoadError

__all__ = [
    "IMAGE_TOKEN",
    "PROJECTOR_KINDS",
    "TokenBatch",
    "EncodedText",
    "VisionTower",
    "AlignmentModel",
    "pick_device",
    "load_vision_tower",
    "load_llm",
    "build_projector",
    "load_alignment_model",
    "encode_text",
    "collate",
]

IMAGE_TOKEN = "<image>"


def pick_device(device: str = "auto") -> tuple[torch.device, torch.dtype]:
    """cuda with bf16 when present (or asked), CPU float32 otherwise."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("model.device = 'cuda' but no CUDA device is available")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def looks_like_path(name: str) -> bool:
    """A model name that can only be a path: absolute, ./ or ../, ~, a backslash, or more than one '/'
    (a hub id is ``name`` or ``org/name``)."""
    return (name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1
            or name in (".", ".."))


def hub_offline() -> bool:
    """Whether Hugging Face downloads are off (HF_HUB_OFFLINE; ``silo`` and ``aggregator`` default to it)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _load_error(what: str, name: str, exc: BaseException) -> ModelLoadError:
    """One line that says what to do: a path that is not there, a hub id not cached offline, or the cause."""
    from pathlib import Path

    if looks_like_path(name) or Path(name).expanduser().exists():
        p = Path(name).expanduser()
        if not p.exists():
            return ModelLoadError(f"cannot load {what}: path {p} not found")
        return ModelLoadError(f"cannot load {what} from {p}: {_first_line(exc)}")
    if hub_offline():
        try:
            from huggingface_hub import constants

            cache = constants.HF_HUB_CACHE
        except ImportError:  # pragma: no cover
            cache = "the Hugging Face cache"
        return ModelLoadError(
            f"cannot load {what} {name!r}: not a local path, and not in the Hugging Face cache ({cache}) while "
            f"downloads are off (HF_HUB_OFFLINE=1, the default of silo and aggregator); download it first "
            f"(`huggingface-cli download {name}`), give a local folder, or set HF_HUB_OFFLINE=0 to allow downloads")
    return ModelLoadError(f"cannot load {what} {name!r}: {_first_line(exc)}")


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class VisionTower(FrozenTower):
    """A frozen HF vision encoder returning LLaVA's selected features (B, N, d_v).

    ``select_layer`` indexes ``hidden_states`` (-2: the penultimate layer, LLaVA's default);
    ``select_feature`` "patch" drops the CLS token when the model has one, "cls_patch" keeps it.
    """

    def __init__(self, model: nn.Module, processor: Any, select_layer: int = -2,
                 select_feature: str = "patch"):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ConfigError(f"model.select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        self.model = _freeze(model)
        self.processor = processor
        self.select_layer = select_layer
        self.select_feature = select_feature
        cfg = getattr(model.config, "vision_config", model.config)
        self.hidden_size = int(cfg.hidden_size)
        self.image_size = int(cfg.image_size)
        grid = (self.image_size // int(cfg.patch_size)) ** 2
        n_layers = int(cfg.num_hidden_layers)
        if not -(n_layers + 1) <= select_layer <= n_layers:
            raise ConfigError(f"model.select_layer {select_layer} out of range for {n_layers} layers")
        with torch.no_grad():
            p = next(model.parameters())
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=p.device, dtype=p.dtype)
            n_tokens = self._hidden(probe).shape[1]
        self.has_cls = n_tokens == grid + 1
        self.num_tokens = n_tokens - (1 if self.has_cls and select_feature == "patch" else 0)

    def _hidden(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[self.select_layer]

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images (or arrays) -> pixel_values on the tower's device and dtype."""
        pv = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pv.to(self.device, self.dtype)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self._hidden(pixel_values.to(self.device, self.dtype))
        if self.has_cls and self.select_feature == "patch":
            feats = feats[:, 1:]
        return feats


def _vision_class(model_type: str):
    import transformers as T

    return {
        "clip": T.CLIPVisionModel,
        "clip_vision_model": T.CLIPVisionModel,
        "siglip": T.SiglipVisionModel,
        "siglip_vision_model": T.SiglipVisionModel,
        "vit": T.ViTModel,
    }.get(model_type, T.AutoModel)


def load_vision_tower(name: str, *, select_layer: int = -2, select_feature: str = "patch",
                      device: str = "auto") -> VisionTower:
    """Load a frozen CLIP / SigLIP / ViT tower and its image processor from a hub id or path.

    ``torch:<name>[@<image size>]`` loads a registered torch encoder instead (``silo/towers.py``:
    ``torch:efficientnet-lite0``), under the same frozen, feature-select contract.
    """
    import transformers as T

    dev, dtype = pick_device(device)
    if name.startswith("torch:"):
        from fedalign.silo.towers import load_torch_tower

        base, _, size = name.partition("@")
        if size and not size.isdigit():
            raise ConfigError(f"model.vision_tower {name!r}: the image size after '@' must be an integer")
        # float32 even on a GPU: in bf16 the CNN's per-image features fell to cosine 0.84 of float32
        # on an H100 (results/gpu/h100_tests.log); a 4.65M-parameter tower costs nothing in float32
        return load_torch_tower(base, select_layer=select_layer, select_feature=select_feature,  # type: ignore[return-value]
                                device=dev, dtype=torch.float32, image_size=int(size) if size else None)
    try:
        cfg = T.AutoConfig.from_pretrained(name)
        cls = _vision_class(cfg.model_type)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if cls is T.ViTModel:
            kwargs["add_pooling_layer"] = False
        with warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(name, **kwargs)
            processor = T.AutoImageProcessor.from_pretrained(name)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        raise _load_error("vision tower", name, exc) from exc
    try:
        return VisionTower(model.to(dev), processor, select_layer, select_feature)
    except (AttributeError, TypeError, KeyError) as exc:  # e.g. a language model given as the tower
        raise ModelLoadError(f"{name!r} is not a vision tower ({cfg.model_type}): {_first_line(exc)}") from exc


def load_llm(name: str, *, gguf_file: str | None = None, device: str = "auto"):
    """Load a frozen causal LM and its tokenizer (``gguf_file`` for GGUF checkpoints)."""
    import transformers as T

    dev, dtype = pick_device(device)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        with warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")
            tok = T.AutoTokenizer.from_pretrained(name, **extra)
            llm = T.AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **extra)
    except Exception as exc:
        raise _load_error("language model", name, exc) from exc
    return _freeze(llm.to(dev)), tok


class _quiet_transformers:
    """Silence transformers' info/warning chatter (fallback processors, GGUF dequantising)."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._hf = hf_logging
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        self._logger = logging.getLogger("transformers")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        if self._bars:
            self._hf.enable_progress_bar()


def build_projector(kind: str, d_vision: int, d_model: int, *, generator: torch.Generator | None = None
                    ) -> nn.Sequential:
    """LLaVA's projectors as a module: ``linear`` (``0``) or ``mlp2x_gelu`` (``0``, GELU, ``2``), float32,
    holding :func:`fedalign.projector.init_projector`'s tensors (the aggregator's θ_0 for the same seed)."""
    shapes = projector_shapes(kind, d_vision, d_model)  # an unknown kind: ConfigError naming the kinds
    layers: list[nn.Module] = [nn.Linear(d_vision, d_model)]
    if "2.weight" in shapes:
        layers += [nn.GELU(), nn.Linear(d_model, d_model)]
    proj = nn.Sequential(*layers)
    proj.load_state_dict(init_projector(kind, d_vision, d_model, generator=generator))
    return proj


@dataclass(frozen=True)
class EncodedText:
    """One sample's token ids: ``pre`` + image slots + ``post`` + caption (targets)."""

    pre: tuple[int, ...]
    post: tuple[int, ...]
    caption: tuple[int, ...]


@dataclass
class TokenBatch:
    """A padded batch. ``image_mask``: slots for image features; ``target_mask``: caption tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    target_mask: torch.Tensor

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(*(t.to(device, non_blocking=True) for t in
                            (self.input_ids, self.attention_mask, self.image_mask, self.target_mask)))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode_text(tokenizer: Any, prompt: str, caption: str, *, max_caption_tokens: int = 64) -> EncodedText:
    """Tokenize ``prompt`` around its single ``<image>`` marker, then the caption and EOS.

    BOS (when the tokenizer has one) opens the sequence; the caption ends with EOS, which is a
    target too, so the LM learns where a caption stops.
    """
    if prompt.count(IMAGE_TOKEN) != 1:
        raise ValueError(f"prompt must contain {IMAGE_TOKEN} exactly once, got {prompt!r}")
    before, after = prompt.split(IMAGE_TOKEN)

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    cap = ids(caption)[:max_caption_tokens] + eos
    if not cap:
        raise ValueError("caption tokenizes to nothing")
    return EncodedText(tuple(bos + ids(before)), tuple(ids(after)), tuple(cap))


def collate(texts: Sequence[EncodedText], n_image_tokens: int, pad_id: int) -> TokenBatch:
    """Right-pad a list of encoded samples into a TokenBatch (``n_image_tokens`` 0: no image)."""
    rows = [list(t.pre) + [pad_id] * n_image_tokens + list(t.post) + list(t.caption) for t in texts]
    L = max(len(r) for r in rows)
    B = len(rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros(B, L, dtype=torch.bool)
    img = torch.zeros(B, L, dtype=torch.bool)
    tgt = torch.zeros(B, L, dtype=torch.bool)
    for i, (t, r) in enumerate(zip(texts, rows)):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = True
        a = len(t.pre)
        img[i, a : a + n_image_tokens] = True
        tgt[i, len(r) - len(t.caption) : len(r)] = True
    return TokenBatch(ids, attn, img, tgt)


class AlignmentModel(nn.Module):
    """Frozen tower + trainable projector + frozen LM, with a per-sample caption loss."""

    def __init__(self, vision: VisionTower, projector: nn.Module, llm: nn.Module, tokenizer: Any,
                 *, projector_kind: str = "mlp2x_gelu", max_caption_tokens: int = 64):
        super().__init__()
        self.vision = vision
        self.projector = projector.to(vision.device)
        self.llm = _freeze(llm)
        self.tokenizer = tokenizer
        self.projector_kind = projector_kind
        self.max_caption_tokens = max_caption_tokens
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self._embed = llm.get_input_embeddings()
        self._decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else None
        self._head = llm.get_output_embeddings()
        self._softcap = getattr(llm.config, "final_logit_softcapping", None)
        self.d_model = int(self._embed.weight.shape[1])

    # -- frozen parts ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.vision.device

    @property
    def lm_dtype(self) -> torch.dtype:
        return self._embed.weight.dtype

    @property
    def n_image_tokens(self) -> int:
        return self.vision.num_tokens

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Frozen tower features for a list of images, (n, N, d_v) in the tower's dtype.

        Deterministic (eval mode, no grad), so callers may cache the result for a whole shard.
        """
        out = [self.vision(self.vision.preprocess(images[i : i + batch_size]))
               for i in range(0, len(images), batch_size)]
        if not out:
            return torch.empty(0, self.n_image_tokens, self.vision.hidden_size,
                               device=self.device, dtype=self.vision.dtype)
        return torch.cat(out)

    def encode_text(self, prompt: str, caption: str) -> EncodedText:
        return encode_text(self.tokenizer, prompt, caption, max_caption_tokens=self.max_caption_tokens)

    def collate(self, texts: Sequence[EncodedText], *, with_image: bool = True) -> TokenBatch:
        return collate(texts, self.n_image_tokens if with_image else 0, self.pad_id).to(self.device)

    # -- trainable part and loss ----------------------------------------------------------
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Projector output (B, N, d_model) in the projector's dtype (float32)."""
        p = next(self.projector.parameters())
        return self.projector(features.to(p.device, p.dtype))

    def caption_nll(self, batch: TokenBatch, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Per-sample caption NLL (B,): mean over each sample's caption tokens.

        ``image_embeds`` (B, N, d_model) fill the image slots; None when the batch has none.
        Sample i's loss depends only on row i (causal LM, per-row attention mask), which makes
        per-sample gradients exact.
        """
        embeds = self._embed(batch.input_ids)
        if image_embeds is not None:
            embeds = embeds.masked_scatter(batch.image_mask.unsqueeze(-1), image_embeds.to(embeds.dtype))
        tmask = batch.target_mask[:, 1:]
        targets = batch.input_ids[:, 1:][tmask]
        if self._decoder is not None and self._head is not None:
            hidden = self._decoder(inputs_embeds=embeds, attention_mask=batch.attention_mask.long(),
                                   use_cache=False).last_hidden_state
            logits = self._head(hidden[:, :-1][tmask]).float()  # only caption positions
            if self._softcap:
                logits = torch.tanh(logits / self._softcap) * self._softcap
        else:
            logits = self.llm(inputs_embeds=embeds, attention_mask=batch.attention_mask.long(),
                              use_cache=False).logits[:, :-1][tmask].float()
        tok = F.cross_entropy(logits, targets, reduction="none")
        row = tmask.nonzero()[:, 0]
        counts = tmask.sum(1).clamp(min=1)
        return torch.zeros(len(batch), device=tok.device).index_add_(0, row, tok) / counts

    def loss_per_sample(self, features: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """Per-sample caption NLL with features projected into the LM (grad flows to projector)."""
        return self.caption_nll(batch, self.project(features))

    def projector_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters as a plain dict (detached clones), the unit of federation."""
        return {k: v.detach().clone() for k, v in self.projector.state_dict().items()}

    def load_projector_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.projector.state_dict()
        if set(state) != set(own):
            raise ValueError(f"projector keys differ: expected {sorted(own)}, got {sorted(state)}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"projector {k}: expected shape {tuple(own[k].shape)}, got {tuple(v.shape)}")
        self.projector.load_state_dict({k: v.to(own[k].device, own[k].dtype) for k, v in state.items()})


def load_alignment_model(vision_tower: str, llm: str, *, projector: str = "mlp2x_gelu",
                         select_layer: int = -2, select_feature: str = "patch",
                         gguf_file: str | None = None, device: str = "auto",
                         max_caption_tokens: int = 64, generator: torch.Generator | None = None
                         ) -> AlignmentModel:
    """Assemble the model from two ids/paths; the projector is freshly initialised from ``generator``."""
    tower = load_vision_tower(vision_tower, select_layer=select_layer, select_feature=select_feature,
                              device=device)
    lm, tok = load_llm(llm, gguf_file=gguf_file, device=device)
    d_model = int(lm.get_input_embeddings().weight.shape[1])
    proj = build_projector(projector, tower.hidden_size, d_model, generator=generator)
    return AlignmentModel(tower, proj, lm, tok, projector_kind=projector, max_caption_tokens=max_caption_tokens)
