"""A state_dict saved from the seed's own ``CLIP(...)`` -> a checkpoint directory.

The parameter names are the same on both sides, so the weights load strictly as they are;
the work is turning the seed's keyword arguments into a CLIPConfig.
"""

from __future__ import annotations

from pathlib import Path

from ..config import CLIPConfig, TextConfig, VisionConfig
from ..errors import CheckpointError
from .common import build_checkpoint, load_torch_state_dict

# The seed's CLIP.__init__ defaults (../shared/seed/seed_clip.py).
SEED_DEFAULTS = dict(
    image_size=224,
    patch_size=16,
    in_channels=3,
    vocab_size=30522,
    embed_dim=768,
    num_heads=12,
    num_layers=12,
    mlp_hidden_dim=3072,
    dropout=0.0,
    d_model=768,
    text_num_layers=6,
    text_num_heads=12,
    text_d_ff=3072,
    max_len=512,
    text_dropout=0.1,
)


def config_from_seed_kwargs(seed_kwargs: dict) -> CLIPConfig:
    unknown = sorted(set(seed_kwargs) - set(SEED_DEFAULTS))
    if unknown:
        raise CheckpointError(
            f"unknown seed keyword argument(s): {', '.join(unknown)} (the seed's CLIP takes {', '.join(SEED_DEFAULTS)})"
        )
    k = {**SEED_DEFAULTS, **seed_kwargs}
    vision = VisionConfig(
        image_size=k["image_size"],
        patch_size=k["patch_size"],
        in_channels=k["in_channels"],
        width=k["embed_dim"],
        num_layers=k["num_layers"],
        num_heads=k["num_heads"],
        mlp_dim=k["mlp_hidden_dim"],
        dropout=k["dropout"],
    )
    text = TextConfig(
        vocab_size=k["vocab_size"],
        width=k["d_model"],
        num_layers=k["text_num_layers"],
        num_heads=k["text_num_heads"],
        mlp_dim=k["text_d_ff"],
        max_len=k["max_len"],
        context_length=min(TextConfig.context_length, k["max_len"]),
        dropout=k["text_dropout"],
    )
    return CLIPConfig(vision=vision, text=text).validate()


def convert(seed_path: str | Path, out_dir: str | Path, seed_kwargs: dict, vocab_path: str | Path) -> Path:
    state_dict = load_torch_state_dict(seed_path, "seed")
    config = config_from_seed_kwargs(seed_kwargs)
    return build_checkpoint(config, state_dict, vocab_path, out_dir, source=str(seed_path))
