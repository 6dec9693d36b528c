"""FLAVA (facebook/flava-full, BSD-3) -> this library's CLIP: FLAVA's contrastive image and text towers.

Checked against transformers' ``models/flava/modeling_flava.py``:
  * both towers are stacks of the same pre-LN layer (``layernorm_before`` -> attention ->
    residual, ``layernorm_after`` -> ``intermediate.dense`` -> exact GELU -> ``output.dense``
    -> residual), then a final ``layernorm``; LayerNorm eps 1e-12;
  * the image tower is the seed's ViT (CLS token, position table, 16x16 patch conv, no
    LayerNorm before the transformer);
  * the text tower has BERT embeddings (word + learned position + token type, LayerNorm) and
    attends bidirectionally, padding masked;
  * the contrastive embeddings are the CLS token after the final LayerNorm, through
    ``image_projection`` / ``text_projection`` (both with bias), normalised; logits are
    ``exp(logit_scale)`` times the cosine, ``logit_scale`` clamped at ln 100 by this library.
Keys come with the ``flava.`` prefix of ``FlavaForPreTraining`` or without it (``FlavaModel``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_weights
from ..config import CLIPConfig, TextConfig, VisionConfig
from ..errors import CheckpointError, ConfigError, TokenizerError
from ..tokenizer import VOCAB_FILE, Tokenizer
from .common import build_checkpoint, encoder_layer_from_bert, load_torch_state_dict, text_embeddings_from_bert

CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # the first one present is read
PREFIX = "flava."  # FlavaForPreTraining keeps FlavaModel's weights under this name
TEMPLATES = ["a photo of a {}."]

# FlavaImageConfig / FlavaTextConfig defaults, for keys a config.json leaves out.
LAYER_DEFAULTS = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    layer_norm_eps=1e-12,
    qkv_bias=True,
)
IMAGE_DEFAULTS = dict(LAYER_DEFAULTS, image_size=224, patch_size=16, num_channels=3)
TEXT_DEFAULTS = dict(LAYER_DEFAULTS, vocab_size=30522, max_position_embeddings=512)

# Left out on purpose: none of these take part in the contrastive image/text embeddings.
DROPPED = (
    "multimodal_model.",  # the multimodal encoder
    "image_to_mm_projection.",
    "text_to_mm_projection.",
    "image_model.pooler.",
    "text_model.pooler.",  # tanh poolers (FLAVA's contrastive head skips them)
    "image_model.embeddings.mask_token",  # masked-image pre-training
    "mim_head.",
    "mlm_head.",
    "itm_head.",
    "mmm_image_head.",
    "mmm_text_head.",  # pre-training heads
    "global_contrastive_head.",
    "image_codebook.",
    # buffers (0..n-1 and zeros) that transformers before 4.31 saved with the weights
    "text_model.embeddings.position_ids",
    "text_model.embeddings.token_type_ids",
)

# nn.TransformerEncoderLayer's names (what encoder_layer_from_bert writes) -> the ViT block's
VIT_BLOCK_NAMES = {
    "self_attn.in_proj_weight": "attn.qkv_proj.weight",
    "self_attn.in_proj_bias": "attn.qkv_proj.bias",
    "self_attn.out_proj.": "attn.out_proj.",
    "linear1.": "mlp.fc1.",
    "linear2.": "mlp.fc2.",
}


class SourceWeights(dict):
    """FLAVA's weights, noting each one read: what is neither read nor dropped is unexpected."""

    def __init__(self, weights: dict[str, torch.Tensor], source: str):
        super().__init__({name.removeprefix(PREFIX): tensor for name, tensor in weights.items()})
        self.source = source
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self:
            raise CheckpointError(f"FLAVA weights {self.source} lack {name!r} (or {PREFIX + name!r})")
        self.read.add(name)
        return super().__getitem__(name)

    def check_all_read(self) -> None:
        unexpected = sorted(name for name in self if name not in self.read and not name.startswith(DROPPED))
        if unexpected:
            shown = ", ".join(unexpected[:5]) + (f", ... (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
            raise CheckpointError(
                f"FLAVA weights {self.source} hold {len(unexpected)} unexpected key(s): {shown} "
                f"(is this a FLAVA checkpoint of another architecture?)"
            )


def convert(source_dir: str | Path, out_dir: str | Path) -> Path:
    source = Path(source_dir)
    if not source.is_dir():
        raise CheckpointError(f"FLAVA directory not found: {source}")
    weights_file = find_weights(source)
    config = read_config(source / CONFIG_FILE)
    check_vocabulary(source / VOCAB_FILE, config)
    weights = SourceWeights(load_weights(weights_file), str(weights_file))
    state_dict = clip_state_dict(weights, config)
    weights.check_all_read()
    return build_checkpoint(config, state_dict, source / VOCAB_FILE, out_dir, source=str(weights_file))


def find_weights(source: Path) -> Path:
    for name in WEIGHTS_FILES:
        if (source / name).is_file():
            return source / name
    raise CheckpointError(
        f"{source} holds no FLAVA weights: expected {' or '.join(WEIGHTS_FILES)} "
        f"(with config.json and vocab.txt) from facebook/flava-full"
    )


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return read_weights(path) if path.suffix == ".safetensors" else load_torch_state_dict(path, "FLAVA")


def read_config(path: Path) -> CLIPConfig:
    """FLAVA's config.json -> CLIPConfig (our defaults where FLAVA's and ours differ set explicitly)."""
    try:
        flava = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read FLAVA config {path}: {error}") from error
    if not isinstance(flava, dict) or flava.get("model_type") != "flava":
        found = flava.get("model_type") if isinstance(flava, dict) else None
        raise CheckpointError(
            f"{path} is not a FLAVA config (model_type {found!r}, expected 'flava'): "
            f"this converter reads facebook/flava-full"
        )
    image = sub_config(flava, "image_config", IMAGE_DEFAULTS, path)
    text = sub_config(flava, "text_config", TEXT_DEFAULTS, path)
    try:
        return CLIPConfig(
            vision=VisionConfig(
                image_size=image["image_size"],
                patch_size=image["patch_size"],
                in_channels=image["num_channels"],
                width=image["hidden_size"],
                num_layers=image["num_hidden_layers"],
                num_heads=image["num_attention_heads"],
                mlp_dim=image["intermediate_size"],
                dropout=image["hidden_dropout_prob"],
                layer_norm_eps=image["layer_norm_eps"],
                resize_mode="squash",
            ),
            text=TextConfig(
                vocab_size=text["vocab_size"],
                width=text["hidden_size"],
                num_layers=text["num_hidden_layers"],
                num_heads=text["num_attention_heads"],
                mlp_dim=text["intermediate_size"],
                max_len=text["max_position_embeddings"],
                context_length=min(TextConfig.context_length, text["max_position_embeddings"]),
                dropout=text["hidden_dropout_prob"],
                layer_norm_eps=text["layer_norm_eps"],
                activation="gelu",
                positions="learned",
                embedding_norm=True,
                pre_norm=True,
                pooling="cls",
            ),
            embed_dim=flava.get("projection_dim", 768),
            projection_bias=True,
            logit_scale_init=flava.get("logit_scale_init_value", 2.6592),  # the weights' value replaces it
            zero_shot_templates=TEMPLATES,
        ).validate()
    except ConfigError as error:
        raise CheckpointError(f"FLAVA config {path} does not fit this library: {error}") from error


def sub_config(flava: dict[str, Any], name: str, defaults: dict[str, Any], path: Path) -> dict[str, Any]:
    """One tower's settings; ``{name}_dict`` (older config.json files) overrides ``{name}`` as in transformers."""
    values = {**defaults, **(flava.get(name) or {}), **(flava.get(f"{name}_dict") or {})}
    if values["hidden_act"] != "gelu":
        raise CheckpointError(
            f"{path}: {name}.hidden_act is {values['hidden_act']!r}; only 'gelu' (exact) is supported"
        )
    if not values["qkv_bias"]:
        raise CheckpointError(f"{path}: {name}.qkv_bias is false; FLAVA's attention has q/k/v biases")
    return values


def check_vocabulary(path: Path, config: CLIPConfig) -> None:
    try:
        Tokenizer(path, config.text.context_length, config.text.vocab_size)
    except TokenizerError as error:
        raise CheckpointError(
            f"FLAVA needs its own {config.text.vocab_size}-token uncased WordPiece vocab.txt "
            f"(from facebook/flava-full): {error}"
        ) from error


def clip_state_dict(weights: SourceWeights, config: CLIPConfig) -> dict[str, torch.Tensor]:
    return {
        **image_tower(weights, config.vision.num_layers),
        **text_tower(weights, config.text.num_layers),
        "image_projection.weight": weights["image_projection.weight"],
        "image_projection.bias": weights["image_projection.bias"],
        "text_projection.weight": weights["text_projection.weight"],
        "text_projection.bias": weights["text_projection.bias"],
        "logit_scale": weights["logit_scale"].reshape(()),
    }


def image_tower(weights: SourceWeights, num_layers: int) -> dict[str, torch.Tensor]:
    embeddings = "image_model.embeddings"
    mapped = {
        "image_encoder.cls_token": weights[f"{embeddings}.cls_token"],
        "image_encoder.pos_embed": weights[f"{embeddings}.position_embeddings"],
        "image_encoder.patch_embed.proj.weight": weights[f"{embeddings}.patch_embeddings.projection.weight"],
        "image_encoder.patch_embed.proj.bias": weights[f"{embeddings}.patch_embeddings.projection.bias"],
        "image_encoder.norm.weight": weights["image_model.layernorm.weight"],
        "image_encoder.norm.bias": weights["image_model.layernorm.bias"],
    }
    for index in range(num_layers):
        layer = flava_layer(weights, f"image_model.encoder.layer.{index}", f"image_encoder.blocks.{index}")
        mapped.update({vit_block_name(name): tensor for name, tensor in layer.items()})
    return mapped


def vit_block_name(name: str) -> str:
    for transformer_name, vit_name in VIT_BLOCK_NAMES.items():
        name = name.replace(f".{transformer_name}", f".{vit_name}")
    return name


def text_tower(weights: SourceWeights, num_layers: int) -> dict[str, torch.Tensor]:
    mapped = text_embeddings_from_bert(weights, "text_model.embeddings")
    mapped["text_encoder.transformer_encoder.norm.weight"] = weights["text_model.layernorm.weight"]
    mapped["text_encoder.transformer_encoder.norm.bias"] = weights["text_model.layernorm.bias"]
    for index in range(num_layers):
        mapped.update(
            flava_layer(
                weights, f"text_model.encoder.layer.{index}", f"text_encoder.transformer_encoder.layers.{index}"
            )
        )
    return mapped


def flava_layer(weights: SourceWeights, source: str, target: str) -> dict[str, torch.Tensor]:
    """One FLAVA pre-LN layer -> ``nn.TransformerEncoderLayer`` keys (norm_first: norm1 before attention)."""
    return encoder_layer_from_bert(
        weights,
        source,
        target,
        attention_norm="layernorm_before",
        output_norm="layernorm_after",
        attention="attention.attention",
    )
