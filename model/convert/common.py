"""Pieces every converter shares: fusing q/k/v, mapping BERT-style layers, writing the result."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoint import check_state_dict, save_pretrained
from ..clip import CLIP
from ..config import CLIPConfig
from ..errors import CheckpointError
from ..tokenizer import Tokenizer


def fuse_qkv(weights: Mapping[str, torch.Tensor], query: str, key: str, value: str, suffix: str) -> torch.Tensor:
    """Concatenate separate q, k, v tensors (``{query}.{suffix}`` ...) into one fused tensor."""
    return torch.cat([weights[f"{name}.{suffix}"] for name in (query, key, value)], dim=0)


def take(weights: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return weights[name]
    except KeyError:
        raise CheckpointError(f"source weights lack {name!r}") from None


def load_torch_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state_dict, loaded without running pickled code (``weights_only``)."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean the same here
        raise CheckpointError(f"cannot read {what} state_dict {path}: {error}") from error
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path} holds a {type(state_dict).__name__}, not a state_dict")
    return dict(state_dict)


def build_checkpoint(
    config: CLIPConfig,
    state_dict: dict[str, torch.Tensor],
    vocab_path: str | Path,
    out_dir: str | Path,
    source: str,
    dtype: torch.dtype | None = None,
) -> Path:
    """Check the mapped weights against the config, load them strictly, and save the directory."""
    tokenizer = Tokenizer(vocab_path, config.text.context_length, config.text.vocab_size)
    with torch.device("meta"):
        clip = CLIP(config)
    check_state_dict(clip, state_dict, source)
    clip.load_state_dict(state_dict, strict=True, assign=True)
    return save_pretrained(clip.float(), tokenizer, out_dir, dtype=dtype)


def text_embeddings_from_bert(weights: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """BERT-style embeddings (``source`` prefix) -> the text tower's token, position and LayerNorm keys.

    One sentence is always token type 0, so that row of the token-type table folds exactly
    into the learned position table.
    """
    positions = (
        take(weights, f"{source}.position_embeddings.weight")
        + take(weights, f"{source}.token_type_embeddings.weight")[0]
    )
    return {
        "text_encoder.embeddings.weight": take(weights, f"{source}.word_embeddings.weight"),
        "text_encoder.positional_encoding.pe": positions.unsqueeze(0),
        "text_encoder.embedding_norm.weight": take(weights, f"{source}.LayerNorm.weight"),
        "text_encoder.embedding_norm.bias": take(weights, f"{source}.LayerNorm.bias"),
    }


def encoder_layer_from_bert(
    weights: Mapping[str, torch.Tensor],
    source: str,
    target: str,
    attention_norm: str,
    output_norm: str,
    attention: str = "attention.self",
    attention_output: str = "attention.output.dense",
) -> dict[str, torch.Tensor]:
    """Map one BERT-style layer (``source`` prefix) onto an ``nn.TransformerEncoderLayer`` (``target``).

    ``attention_norm``/``output_norm`` name the two LayerNorms relative to ``source``: BERT's
    post-LN layers call them ``attention.output.LayerNorm`` / ``output.LayerNorm``, FLAVA's pre-LN
    layers ``layernorm_before`` / ``layernorm_after``. Either way the first becomes ``norm1``.
    """
    s = source
    qkv = [f"{s}.{attention}.{n}" for n in ("query", "key", "value")]
    mapped = {
        f"{target}.self_attn.in_proj_weight": fuse_qkv(weights, qkv[0], qkv[1], qkv[2], "weight"),
        f"{target}.self_attn.in_proj_bias": fuse_qkv(weights, qkv[0], qkv[1], qkv[2], "bias"),
    }
    renames = {
        "self_attn.out_proj": f"{attention_output}",
        "norm1": attention_norm,
        "linear1": "intermediate.dense",
        "linear2": "output.dense",
        "norm2": output_norm,
    }
    for ours, theirs in renames.items():
        for parameter in ("weight", "bias"):
            mapped[f"{target}.{ours}.{parameter}"] = take(weights, f"{s}.{theirs}.{parameter}")
    return mapped
