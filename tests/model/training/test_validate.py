"""Validation as the server would classify: composited over white like model.preprocess, normalised
with the model's own mean and std, scored with the CLIP head's logits (top-1, top-5, loss)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from model.pixels import over_white
from model.preprocess import to_rgb
from model.training.bundle import Bundle
from model.training.recipe import Recipe
from model.training.towers import TrainedTowers
from model.training.validate import validate
from tests.model.training.conftest import tiny_recipe

# not CLIP's: a normalisation hard-coded to CLIP's constants gives other logits
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
# the rank of each image's own concept among its logits (0: the highest); 7 images, 9 concepts
RANKS = [0, 1, 4, 5, 8, 0, 3]


def test_over_white_is_pillows_compositing_in_to_rgb():
    generator = np.random.default_rng(0)
    rgba = generator.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255  # fully transparent and fully opaque rows too
    served = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")), dtype=np.float64)
    trained = over_white(torch.from_numpy(rgba).permute(2, 0, 1)[None])[0].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(trained * 255, served, rtol=0, atol=1.0)  # Pillow rounds to whole levels
    assert (served[0] == 255).all()


def hand_logits(towers: TrainedTowers, rgba: torch.Tensor, class_features: torch.Tensor) -> list[list[float]]:
    """The logits written out: over white, (x - MEAN) / STD, cosines times exp(min(scale, ln 100))."""
    alpha = rgba[:, 3:].double() / 255
    rgb = rgba[:, :3].double() / 255 * alpha + (1 - alpha)
    pixels = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        images = towers.embed_images(pixels.float()).double()
        texts = towers.embed_texts(class_features).double()
    temperature = math.exp(min(towers.logit_scale.item(), math.log(100)))
    return (temperature * images @ texts.t()).tolist()


def test_validation_scores_top1_top5_and_cross_entropy_over_every_concept():
    torch.manual_seed(0)
    recipe = tiny_recipe(text_width=8)
    towers = TrainedTowers(recipe.updated(vision={**recipe.vision, "mean": MEAN, "std": STD})).eval()
    with torch.no_grad():
        towers.logit_scale.fill_(math.log(30.0))
    rgba = torch.randint(0, 256, (len(RANKS), 4, 32, 32), dtype=torch.uint8)
    class_features = torch.randn(9, 8)
    logits = hand_logits(towers, rgba, class_features)
    # each image's concept: the one at its chosen rank
    concepts = [sorted(range(9), key=lambda c: -row[c])[rank] for row, rank in zip(logits, RANKS)]
    empty = torch.zeros((0, 4, 32, 32), dtype=torch.uint8)
    none = torch.zeros(0, dtype=torch.long)
    bundle = Bundle(Recipe(), empty, none, none, none, class_features, rgba, torch.tensor(concepts), class_features)

    result = validate(towers, bundle, torch.device("cpu"), batch_size=3)  # three batches, the last partial

    assert result is not None
    assert result.top1 == pytest.approx(2 / 7)  # ranks 0, 0
    assert result.top5 == pytest.approx(5 / 7)  # ranks 0, 1, 4, 0, 3
    cross_entropy = [math.log(sum(math.exp(v) for v in row)) - row[c] for row, c in zip(logits, concepts)]
    assert result.loss == pytest.approx(sum(cross_entropy) / len(RANKS), rel=1e-4)


def test_validation_with_fewer_than_five_concepts_counts_every_image_in_its_top_five():
    torch.manual_seed(0)
    towers = TrainedTowers(tiny_recipe(text_width=8)).eval()
    rgba = torch.randint(0, 256, (4, 4, 32, 32), dtype=torch.uint8)
    class_features = torch.randn(3, 8)
    empty, none = torch.zeros((0, 4, 32, 32), dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    bundle = Bundle(Recipe(), empty, none, none, none, class_features, rgba, torch.tensor([0, 1, 2, 0]), class_features)
    result = validate(towers, bundle, torch.device("cpu"))
    assert result is not None and result.top5 == 1.0
