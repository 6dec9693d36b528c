"""Fixtures for the training and evaluation tests: a few real emoji built by the dataset builder,
and a MiniLM base checkpoint with a tiny image tower, each made once per session."""

from __future__ import annotations

import shutil

import pytest

from model.config import VisionConfig
from model.convert.minilm import convert
from model.data import emoji_sources
from model.data.emoji import EVERYDAY, build
from model.data.emoji_sources import PACKAGES, default_cache_dir

TINY_VISION = dict(image_size=32, patch_size=8, width=32, num_layers=2, num_heads=2, mlp_dim=64)
TINY_EMBED_DIM = 32
# the 10-way set plus a few more, so batches hold several concepts and every split is present
SMALL_SET = [*EVERYDAY, "1F44D", "2764", "1F600", "1F622", "1F47B", "1F480"]


@pytest.fixture(scope="session")
def emoji_cache():
    """The pinned npm packages, fetched once (skips, saying why, where npm is missing)."""
    cache = default_cache_dir()
    if not all((cache / p.tarball_name).exists() for p in PACKAGES) and shutil.which("npm") is None:
        pytest.skip(f"npm is not installed and the pinned emoji packages are not cached in {cache}")
    emoji_sources.fetch_all(cache)
    return cache


@pytest.fixture(scope="session")
def emoji_data(emoji_cache, tmp_path_factory):
    """DATA_DIR with a handful of real emoji in every style, from the builder's own code path."""
    data_dir = tmp_path_factory.mktemp("emoji-data")
    build(data_dir, emoji_cache, only=SMALL_SET, workers=2)
    return data_dir


@pytest.fixture(scope="session")
def minilm_base(tmp_path_factory):
    """all-MiniLM-L6-v2 text tower + a tiny fresh image tower (the frozen base of training)."""
    return convert(tmp_path_factory.mktemp("base"), vision=VisionConfig(**TINY_VISION), embed_dim=TINY_EMBED_DIM)
