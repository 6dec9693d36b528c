"""Configuration dataclasses for the two towers and the CLIP head.

Defaults are the seed's (../shared/seed/clip-seed.md): a ViT-B/16 image tower, a 6-layer
post-LN text tower with sinusoidal positions, ReLU and mean pooling, no projections.
Every other field exists because a real checkpoint needs it (all-MiniLM-L6-v2, FLAVA,
the bundled emoji model). The config is saved as JSON next to the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("crop", "squash")
STEMS = ("patch", "convolutional")


@dataclass
class VisionConfig:
    image_size: int = 224  # square input side, in pixels
    patch_size: int = 16
    in_channels: int = 3
    width: int = 768  # embed_dim in the seed
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072  # mlp_hidden_dim in the seed
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5  # torch's default, as in the seed; FLAVA uses 1e-12
    # preprocessing: "crop" = shorter side to image_size then center crop (CLIP);
    # "squash" = resize straight to image_size x image_size, aspect not kept (FLAVA)
    resize_mode: str = "crop"
    mean: tuple[float, ...] = CLIP_MEAN  # one per input channel
    std: tuple[float, ...] = CLIP_STD
    # Options for small data (off by default: seed, MiniLM and FLAVA checkpoints never use them).
    # "patch": one patch_size x patch_size convolution (the seed). "convolutional": log2(patch_size)
    # stride-2 3x3 convolutions then a 1x1 projection, the same token grid (Xiao et al. 2021,
    # "Early convolutions help transformers see better").
    stem: str = "patch"
    # After this many blocks, halve the token grid's side with a stride-2 depthwise convolution
    # (PiT, Heo et al. 2021): the remaining blocks run on a quarter of the tokens. 0: never.
    pool_after: int = 0

    def validate(self) -> None:
        _require(
            self.width % self.num_heads == 0,
            f"vision.width {self.width} is not divisible by vision.num_heads {self.num_heads}",
        )
        _require(
            self.image_size % self.patch_size == 0,
            f"vision.image_size {self.image_size} is not a multiple of vision.patch_size {self.patch_size}",
        )
        _require(
            self.resize_mode in RESIZE_MODES,
            f"vision.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}",
        )
        _require(
            len(self.mean) == self.in_channels and len(self.std) == self.in_channels,
            "vision.mean and vision.std need one value per channel",
        )
        _require(all(s > 0 for s in self.std), "vision.std values must be positive")
        _require(self.stem in STEMS, f"vision.stem must be one of {STEMS}, got {self.stem!r}")
        _require(
            self.stem == "patch" or (self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0),
            f"a convolutional stem halves the image per layer: vision.patch_size {self.patch_size} "
            "must be a power of two",
        )
        _require(
            self.pool_after == 0 or 1 <= self.pool_after < self.num_layers,
            f"vision.pool_after {self.pool_after} must be between 1 and num_layers - 1 "
            f"({self.num_layers - 1}), or 0 for no pooling",
        )
        _require(
            self.pool_after == 0 or self.grid_size % 2 == 0,
            f"token pooling halves the {self.grid_size}x{self.grid_size} token grid: it must have an even side",
        )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass
class TextConfig:
    vocab_size: int = 30522
    width: int = 768  # d_model in the seed
    num_layers: int = 6
    num_heads: int = 12
    mlp_dim: int = 3072  # d_ff in the seed
    max_len: int = 512  # size of the position table
    context_length: int = 77  # tokens kept per text (truncation), at most max_len
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    activation: str = "relu"  # "relu" (seed) or "gelu" (BERT, FLAVA: exact erf GELU)
    positions: str = "sinusoidal"  # "sinusoidal" (seed) or "learned" (BERT)
    embedding_norm: bool = False  # LayerNorm after token + position embeddings (BERT)
    pre_norm: bool = False  # pre-LN blocks with a final LayerNorm (FLAVA); seed = post-LN
    pooling: str = "mean"  # "mean" over real tokens (seed, MiniLM) or "cls" (index 0, FLAVA)

    def validate(self) -> None:
        _require(
            self.width % self.num_heads == 0,
            f"text.width {self.width} is not divisible by text.num_heads {self.num_heads}",
        )
        _require(
            1 <= self.context_length <= self.max_len,
            f"text.context_length {self.context_length} must be between 1 and text.max_len {self.max_len}",
        )
        _require(
            self.activation in ("relu", "gelu"), f"text.activation must be 'relu' or 'gelu', got {self.activation!r}"
        )
        _require(
            self.positions in ("sinusoidal", "learned"),
            f"text.positions must be 'sinusoidal' or 'learned', got {self.positions!r}",
        )
        _require(self.pooling in ("mean", "cls"), f"text.pooling must be 'mean' or 'cls', got {self.pooling!r}")


@dataclass
class CLIPConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    # Shared embedding size. None = no projections (the seed): both towers must then be equally wide.
    embed_dim: int | None = None
    projection_bias: bool = False
    logit_scale_init: float = math.log(1 / 0.07)
    zero_shot_templates: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = _from_dict(VisionConfig, self.vision, "vision")
        if isinstance(self.text, dict):
            self.text = _from_dict(TextConfig, self.text, "text")
        self.vision.mean = tuple(self.vision.mean)
        self.vision.std = tuple(self.vision.std)
        self.zero_shot_templates = list(self.zero_shot_templates)

    def validate(self) -> CLIPConfig:
        self.vision.validate()
        self.text.validate()
        if self.embed_dim is None:
            _require(
                self.vision.width == self.text.width,
                f"without projections (embed_dim null) vision.width {self.vision.width} must equal text.width {self.text.width}",
            )
        for template in self.zero_shot_templates:
            _require("{}" in template, f"zero-shot template {template!r} has no '{{}}' for the label")
        return self

    @property
    def output_dim(self) -> int:
        return self.embed_dim if self.embed_dim is not None else self.vision.width

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPConfig:
        return _from_dict(cls, data, "config").validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CLIPConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must hold a JSON object")
        return cls.from_dict(data)


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {where} field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        return cls(**data)
    except TypeError as error:
        raise ConfigError(f"bad {where}: {error}") from error


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
