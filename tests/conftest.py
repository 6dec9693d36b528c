"""Shared fixtures: a tiny but real checkpoint, written by the library's own save path."""
from __future__ import annotations

import pytest
import torch

import model
from model.convert.minilm import package_dir

TINY_CONFIG = dict(
    vision=dict(image_size=32, patch_size=8, width=32, num_layers=2, num_heads=2, mlp_dim=64),
    text=dict(width=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=64, context_length=16, dropout=0.0),
    embed_dim=24,
    zero_shot_templates=["a photo of a {}.", "a drawing of a {}."],
)


def tiny_config(**changes) -> model.CLIPConfig:
    data = {**TINY_CONFIG, **changes}
    return model.CLIPConfig.from_dict(data)


@pytest.fixture(scope="session")
def vocab_path():
    """The real 30522-token uncased WordPiece vocabulary (shipped by the dev dependency)."""
    return package_dir() / "vocab.txt"


def make_checkpoint(directory, vocab_path, seed: int = 0, **changes):
    torch.manual_seed(seed)
    config = tiny_config(**changes)
    clip = model.CLIP(config).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(2.0)  # not the init value, so loading it is really checked
    tokenizer = model.Tokenizer(vocab_path, config.text.context_length, config.text.vocab_size)
    return model.save_pretrained(clip, tokenizer, directory)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, vocab_path):
    """Path of a tiny CLIP checkpoint directory (config.json, model.safetensors, vocab.txt)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), vocab_path)
