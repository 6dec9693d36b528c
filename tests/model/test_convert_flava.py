"""The FLAVA converter against transformers' own FLAVA (a tiny random one, nothing downloaded)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

import model
from model.convert import flava
from model.convert.__main__ import main as convert_main

transformers = pytest.importorskip("transformers")

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_TEXT = dict(
    vocab_size=30522,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=80,
)
TINY_IMAGE = dict(
    image_size=32,
    patch_size=8,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    vocab_size=64,
)
TINY_MULTIMODAL = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
TINY_CODEBOOK = dict(hidden_size=8, num_groups=1, num_blocks_per_group=1, vocab_size=64)
# FlavaForPreTraining's layout gets a logit_scale above ln 100 (clamped), FlavaModel's one below.
LOGIT_SCALES = {"pretraining": 5.0, "model": 2.5}
TEXTS = ["a photo of a cat", "dog", "a blurry photograph of a red car parked on a rainy street at night", "an apple."]


def pictures() -> list[Image.Image]:
    """Pillow-made pictures of different sizes, aspects and modes."""
    gradient = np.linspace(0, 255, 120 * 90, dtype=np.float64).reshape(90, 120)
    photo = Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 90)], -1).astype(np.uint8))
    ImageDraw.Draw(photo).ellipse((20, 10, 80, 70), fill=(250, 40, 30))
    tall = Image.new("RGB", (40, 100), (30, 120, 200))
    ImageDraw.Draw(tall).rectangle((5, 30, 35, 60), fill=(255, 255, 0))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    transparent = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    ImageDraw.Draw(transparent).polygon([(0, 50), (25, 0), (50, 50)], fill=(0, 160, 60, 255))
    return [photo, tall, noise, transparent]


@pytest.fixture(scope="module")
def reference():
    """transformers' FlavaForPreTraining, tiny, every parameter randomised (its init zeroes the CLS
    token and positions and sets LayerNorms to 1/0, which would hide a swapped mapping)."""
    config = transformers.FlavaConfig(
        text_config=TINY_TEXT,
        image_config=TINY_IMAGE,
        multimodal_config=TINY_MULTIMODAL,
        image_codebook_config=TINY_CODEBOOK,
        projection_dim=20,
        hidden_size=16,
    )
    torch.manual_seed(0)
    pretraining = transformers.FlavaForPreTraining(config).eval()
    with torch.no_grad():
        for parameter in pretraining.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return pretraining


@pytest.fixture(scope="module")
def sources(reference, tmp_path_factory, vocab_path):
    """The four Hugging Face directories: {pretraining ('flava.' keys), model (bare keys)} x {safetensors, bin}."""
    directories = {}
    for layout, module in (("pretraining", reference), ("model", reference.flava)):
        with torch.no_grad():
            reference.flava.logit_scale.fill_(LOGIT_SCALES[layout])
        for weights_format in ("safetensors", "bin"):
            directory = tmp_path_factory.mktemp(f"flava-{layout}-{weights_format}")
            module.save_pretrained(directory)  # config.json + model.safetensors
            if weights_format == "bin":  # the pickle layout older transformers wrote
                weights = load_file(directory / "model.safetensors")
                (directory / "model.safetensors").unlink()
                torch.save(weights, directory / "pytorch_model.bin")
            shutil.copyfile(vocab_path, directory / "vocab.txt")
            directories[layout, weights_format] = directory
    with torch.no_grad():
        reference.flava.logit_scale.fill_(LOGIT_SCALES["pretraining"])
    return directories


def test_both_layouts_are_really_written(sources):
    pretraining = load_file(sources["pretraining", "safetensors"] / "model.safetensors")
    bare = torch.load(sources["model", "bin"] / "pytorch_model.bin", weights_only=True)
    assert "flava.logit_scale" in pretraining and any(name.startswith("image_codebook.") for name in pretraining)
    assert "logit_scale" in bare and not any(name.startswith("flava.") for name in bare)


def reference_embeddings(flava_model, pixels, ids, mask):
    """FLAVA's contrastive embeddings as FlavaForPreTraining computes them: the CLS token after the
    final LayerNorm, projected, normalised (not get_*_features, which project every token)."""
    with torch.no_grad():
        image = flava_model.image_model(pixel_values=pixels).last_hidden_state[:, 0]
        text = flava_model.text_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state[:, 0]
        return (
            F.normalize(flava_model.image_projection(image), dim=-1),
            F.normalize(flava_model.text_projection(text), dim=-1),
        )


@pytest.mark.parametrize("layout", ["pretraining", "model"])
@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_converted_flava_matches_transformers(reference, sources, tmp_path, layout, weights_format):
    out = tmp_path / "converted"
    if (layout, weights_format) == ("pretraining", "safetensors"):  # the real command line, once
        run = subprocess.run(
            [sys.executable, "-m", "model.convert", "flava", str(sources[layout, weights_format]), str(out)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert f"wrote {out}" in run.stdout
    else:
        assert convert_main(["flava", str(sources[layout, weights_format]), str(out)]) == 0

    clip = model.load_pretrained(out)
    tokenizer = model.load_tokenizer(out)
    assert clip.config.vision.resize_mode == "squash" and clip.config.text.pooling == "cls"
    pixels = model.preprocess_images(pictures(), clip.config)
    ids, mask = tokenizer(TEXTS)
    assert not mask.all()  # a padded batch: the mask matters

    expected_image, expected_text = reference_embeddings(reference.flava, pixels, ids, mask)
    with torch.no_grad():
        image, text = clip.encode_image(pixels), clip.encode_text(ids, mask)
        logits_per_image, logits_per_text = clip(pixels, ids, mask)
    assert F.cosine_similarity(image, expected_image).min() >= 0.9999
    assert F.cosine_similarity(text, expected_text).min() >= 0.9999

    temperature = math.exp(min(LOGIT_SCALES[layout], math.log(100.0)))
    expected_logits = temperature * expected_image @ expected_text.t()
    assert (logits_per_image - expected_logits).abs().max() <= 1e-3
    assert torch.equal(logits_per_text, logits_per_image.t())


def test_tokenizer_matches_flavas_bert_tokenizer(vocab_path):
    ours = model.Tokenizer(vocab_path, context_length=77)
    theirs = transformers.BertTokenizer(str(vocab_path), do_lower_case=True)
    for text in TEXTS + ["Café DÉJÀ-VU, isn't it?", "x" * 300]:
        ids, _ = ours([text])
        assert ids[0].tolist() == theirs(text, truncation=True, max_length=77)["input_ids"]


def test_preprocessing_matches_flavas_image_processor(tmp_path):
    processor = transformers.FlavaImageProcessorPil()  # resize to 224x224 (bicubic), CLIP mean/std
    picture = pictures()[0].resize((333, 250))
    picture.save(tmp_path / "photo.jpg", quality=90)
    image = model.load_image(tmp_path / "photo.jpg")  # a real decoded JPEG
    ours = model.preprocess_images([image], model.VisionConfig(image_size=224, resize_mode="squash"))
    theirs = processor(image, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    assert (ours - theirs).abs().max() <= 1e-5


# --- refusals ---------------------------------------------------------------------------------


@pytest.fixture
def source_copy(sources, tmp_path):
    directory = tmp_path / "source"
    shutil.copytree(sources["pretraining", "safetensors"], directory)
    return directory


def edit_weights(directory: Path, change) -> None:
    weights = load_file(directory / "model.safetensors")
    change(weights)
    save_file(weights, directory / "model.safetensors")


def test_refuses_a_directory_without_weights(source_copy, tmp_path):
    (source_copy / "model.safetensors").unlink()
    with pytest.raises(
        model.CheckpointError, match="no FLAVA weights: expected model.safetensors or pytorch_model.bin"
    ):
        flava.convert(source_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_another_model_type(source_copy, tmp_path):
    config = json.loads((source_copy / "config.json").read_text())
    config["model_type"] = "clip"
    (source_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(model.CheckpointError, match="not a FLAVA config \\(model_type 'clip', expected 'flava'\\)"):
        flava.convert(source_copy, tmp_path / "out")


def test_refuses_a_vocabulary_of_another_size(source_copy, vocab_path, tmp_path):
    lines = vocab_path.read_text(encoding="utf-8").splitlines()
    (source_copy / "vocab.txt").write_text("\n".join(lines[:1000]) + "\n", encoding="utf-8")
    with pytest.raises(model.CheckpointError, match="30522-token .* has 1000 tokens"):
        flava.convert(source_copy, tmp_path / "out")


def test_refuses_missing_keys(source_copy, tmp_path):
    edit_weights(
        source_copy, lambda weights: weights.pop("flava.text_model.encoder.layer.1.attention.attention.key.bias")
    )
    with pytest.raises(model.CheckpointError, match="lack 'text_model.encoder.layer.1.attention.attention.key.bias'"):
        flava.convert(source_copy, tmp_path / "out")


def test_refuses_unexpected_keys_but_drops_the_listed_ones(source_copy, tmp_path):
    def add_unknown(weights):
        weights["flava.text_model.encoder.layer.1.adapter.weight"] = torch.zeros(2)

    edit_weights(source_copy, add_unknown)
    with pytest.raises(
        model.CheckpointError, match="1 unexpected key\\(s\\): text_model.encoder.layer.1.adapter.weight"
    ):
        flava.convert(source_copy, tmp_path / "out")


def test_cli_reports_a_refusal(source_copy, tmp_path, capsys):
    (source_copy / "model.safetensors").unlink()
    assert convert_main(["flava", str(source_copy), str(tmp_path / "out")]) == 1
    assert "error:" in capsys.readouterr().err
