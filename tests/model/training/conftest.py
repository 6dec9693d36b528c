"""The training tests' shared pieces: a tiny recipe, a bundle packed from the real emoji fixtures
(tests/model/conftest.py), and a two-image bundle written out by hand."""

from __future__ import annotations

import pytest
import torch

from model.training.bundle import Bundle
from model.training.pack import pack
from model.training.recipe import Recipe
from tests.model.conftest import TINY_EMBED_DIM, TINY_VISION

# augmentations off: the image as served, composited over white
QUIET = dict(blur=0.0, noise=0.0, jpeg=0.0, white_background=1.0, scale=(1.0, 1.0), translate=0.0, rotate_degrees=0.0)


def tiny_recipe(**changes) -> Recipe:
    return Recipe(
        vision=TINY_VISION,
        embed_dim=TINY_EMBED_DIM,
        batch_size=8,
        epochs=2,
        warmup_steps=2,
        learning_rate=3e-3,
        **changes,
    )


@pytest.fixture(scope="session")
def bundle_path(emoji_data, minilm_base, tmp_path_factory):
    return pack(emoji_data, tmp_path_factory.mktemp("bundle") / "bundle.npz", tiny_recipe(), base=minilm_base)


def two_image_bundle() -> Bundle:
    """Image 0 (concept 0) has captions 0 and 1, image 1 (concept 1) captions 0 and 2: caption 0
    is shared by two concepts, 1 and 2 are each their own concept's. Concept 2 has no image."""
    features = torch.eye(3)
    return Bundle(
        Recipe(),
        torch.zeros((2, 4, 8, 8), dtype=torch.uint8),
        torch.tensor([0, 1]),
        torch.tensor([0, 2, 4]),
        torch.tensor([0, 1, 0, 2]),
        features,
        torch.zeros((0, 4, 8, 8), dtype=torch.uint8),
        torch.zeros(0, dtype=torch.long),
        features,
    )
