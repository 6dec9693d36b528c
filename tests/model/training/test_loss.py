"""The training loss, its concept classes, and the trained towers' temperature."""

from __future__ import annotations

import math

import pytest
import torch

from model.training.loss import contrastive_loss, seen_concepts
from model.training.towers import TrainedTowers
from tests.model.training.conftest import tiny_recipe, two_image_bundle


def test_contrastive_loss_does_not_push_apart_images_of_one_concept():
    def gradient(concepts):
        logits = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
        loss, accuracy = contrastive_loss(logits, torch.tensor(concepts))
        loss.backward()
        return logits.grad, accuracy

    same_concept, accuracy = gradient([7, 7, 3])
    distinct, _ = gradient([1, 2, 3])
    assert same_concept[0, 1] <= 0 < distinct[0, 1]  # image 0 with caption 1: a positive, not a negative
    assert accuracy == 1.0


# image i's logits against caption j; images of three different concepts. Not symmetric: by rows
# (image -> text) image 1 is closest to caption 0, by columns (text -> image) every caption is
# closest to its own image.
ASYMMETRIC_LOGITS = [[3.0, 0.0, 0.0], [2.0, 1.0, 0.5], [0.0, 0.0, 4.0]]


def cross_entropy_by_hand(rows: list[list[float]]) -> float:
    """Mean over rows of -log softmax(row)[i] for row i (its own caption, or image, is the target)."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / len(rows)


def test_contrastive_loss_averages_both_directions_and_accuracy_is_image_to_text():
    loss, accuracy = contrastive_loss(torch.tensor(ASYMMETRIC_LOGITS), torch.tensor([4, 5, 6]))
    columns = [list(column) for column in zip(*ASYMMETRIC_LOGITS)]
    expected = (cross_entropy_by_hand(ASYMMETRIC_LOGITS) + cross_entropy_by_hand(columns)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(2 / 3)  # rows 0 and 2 pick their own caption, row 1 caption 0


def test_concept_loss_classes_are_the_seen_concepts_only():
    seen, row = seen_concepts(two_image_bundle())
    assert seen.tolist() == [0, 1] and row.tolist() == [0, 1, -1]


def test_trained_towers_clamp_the_temperature_at_100():
    torch.manual_seed(0)
    towers = TrainedTowers(tiny_recipe(text_width=8))
    pixels, texts = torch.randn(2, 3, 32, 32), torch.randn(3, 8)
    with torch.no_grad():
        towers.logit_scale.fill_(math.log(1000.0))  # a scale training pushed past ln 100
        (logits,) = towers(pixels, texts)
        cosines = towers.embed_images(pixels) @ towers.embed_texts(texts).t()
    torch.testing.assert_close(logits, 100.0 * cosines, rtol=1e-6, atol=1e-5)
