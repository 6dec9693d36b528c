"""The training bundle: what pack writes from real emoji, and how captions are drawn from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import model
from model.data.index import read_index
from model.errors import ConfigError
from model.training.bundle import MAX_BUNDLE_BYTES, load_bundle
from model.training.pack import pooled_text_features
from model.training.recipe import Recipe
from tests.model.training.conftest import two_image_bundle


def test_bundle_holds_the_training_split_and_the_text_towers_pooled_features(bundle_path, emoji_data, minilm_base):
    bundle = load_bundle(bundle_path)
    records = read_index(emoji_data / "index.jsonl")
    train_records = [r for r in records if r["split"] == "train" and r["variant"] == r["concept"]]
    assert len(bundle.train_images) == len(train_records) > 0
    assert bundle.train_images.shape[1:] == (4, 32, 32) and bundle.train_images.dtype == torch.uint8
    assert len(bundle.val_images) == sum(
        r["split"] in ("val", "val_unseen") and r["variant"] == r["concept"] for r in records
    )
    assert len(bundle.class_features) == len({r["concept"] for r in records})
    # the cached features are exactly what the frozen text tower gives for the image's captions
    clip, tokenizer = model.load_pretrained(minilm_base), model.load_tokenizer(minilm_base)
    rows = bundle.caption_index[bundle.caption_offsets[0] : bundle.caption_offsets[1]]
    expected = pooled_text_features(clip, tokenizer, train_records[0]["captions"])
    assert len(rows) == len(train_records[0]["captions"])
    torch.testing.assert_close(bundle.caption_features[rows], torch.from_numpy(expected).float())
    assert bundle_path.stat().st_size < MAX_BUNDLE_BYTES


def test_pooled_text_features_batched_by_length_are_each_texts_own_in_the_given_order(minilm_base):
    clip, tokenizer = model.load_pretrained(minilm_base), model.load_tokenizer(minilm_base)
    texts = ["an emoji of a thumbs up: medium-light skin tone", "cat", "a drawing of a red heart", "ok", "rocket ship"]
    batched = pooled_text_features(clip, tokenizer, texts, batch_size=2)
    with torch.no_grad():
        alone = [clip.text_encoder(*tokenizer([text]))[0].to(torch.float16) for text in texts]
    torch.testing.assert_close(torch.from_numpy(batched), torch.stack(alone), rtol=0, atol=2e-3)
    assert batched.dtype == np.float16 and batched.shape == (5, clip.config.text.width)


@pytest.mark.parametrize("sampling, expected_share", [("uniform", 1 / 2), ("specific", 2 / 3)])
def test_caption_sampling_draws_shared_captions_less_often_when_specific(sampling, expected_share):
    bundle = two_image_bundle()
    draws = bundle.caption_draws(sampling)
    images = torch.tensor([0, 1]).repeat(20_000)
    captions = bundle.sample_captions(images, torch.Generator().manual_seed(0), draws).view(-1, 2)
    assert set(captions[:, 0].tolist()) == {0, 1} and set(captions[:, 1].tolist()) == {0, 2}  # never another image's
    own_caption_share = (captions != 0).float().mean(dim=0)
    torch.testing.assert_close(own_caption_share, torch.full((2,), expected_share), rtol=0, atol=0.01)


def test_unknown_caption_sampling_is_a_clear_error():
    with pytest.raises(ConfigError, match="caption_sampling must be one of uniform, specific"):
        Recipe(caption_sampling="rare")
