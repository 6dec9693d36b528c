"""clip-eval on real images: a folder set, the emoji index, and the shipped model's card figures."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model
from model import eval as clip_eval
from model.data import emoji
from model.data.emoji_catalog import TEST_STYLE, load_concepts
from model.data.emoji_sources import EMOJIBASE, extract
from model.data.index import write_index

SHIPPED = Path(model.__file__).parent / "weights" / "emoji-clip"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder_set(emoji_data, tmp_path_factory):
    """FOLDER/<class>/<image>: three classes of Twemoji and Noto drawings."""
    root = tmp_path_factory.mktemp("folder-set")
    for name, hexcode in (("cat", "1F431"), ("hot_dog_free_pizza", "1F355"), ("rocket", "1F680")):
        (root / name).mkdir()
        for style in ("twitter", "google"):
            shutil.copy(emoji_data / "images" / style / f"{hexcode}.png", root / name / f"{style}.png")
    return root


def test_folder_set_scores_match_a_direct_computation(tiny_checkpoint, folder_set):
    clip, tokenizer = model.load_pretrained(tiny_checkpoint), model.load_tokenizer(tiny_checkpoint)
    data = clip_eval.from_folder(folder_set)
    assert data.class_names == ["cat", "hot dog free pizza", "rocket"] and len(data.paths) == 6
    result = clip_eval.evaluate(clip, tokenizer, data)
    classes = model.zero_shot.label_embeddings(clip, tokenizer, data.class_names, clip.config.zero_shot_templates)
    with torch.inference_mode():
        predicted = (clip.encode_image(model.open_images(data.paths, clip.config)) @ classes.t()).argmax(dim=1)
    expected = 100 * (predicted == torch.tensor(data.labels)).float().mean().item()
    assert result["top1"] == pytest.approx(expected, abs=0.01)
    assert result["top5"] == 100.0  # three classes: the truth is always among the top five
    assert sum(g["n"] for g in result["groups"].values()) == 6


def test_scores_top1_top5_and_groups():
    classes = torch.eye(6)  # so an image's row is its score for each class
    images = torch.tensor([[6.0, 5, 4, 3, 2, 1], [6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6]])
    result = clip_eval.scores(images, [0, 2, 0], classes, ["a", "a", "b"])  # right; third; last of six
    assert result["top1"] == pytest.approx(100 / 3, abs=0.01)
    assert result["top5"] == pytest.approx(200 / 3, abs=0.01)
    assert result["groups"]["a"] == {"n": 2, "top1": 50.0, "top5": 100.0}


def test_cli_on_the_emoji_index_prints_json(tiny_checkpoint, emoji_data, capsys):
    assert clip_eval.main([str(tiny_checkpoint), str(emoji_data), "--emoji", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["style"] == TEST_STYLE
    assert report["everyday"]["n"] == 10
    assert report["all"]["n"] == report["seen"]["n"] + report["unseen"]["n"] > 10
    assert report["paraphrase"]["n"] >= 10


def test_cli_says_what_to_fix_for_a_folder_without_class_folders(tiny_checkpoint, tmp_path, capsys):
    assert clip_eval.main([str(tiny_checkpoint), str(tmp_path)]) == 1
    assert "class sub-folders" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def twemoji_test_set(emoji_cache, tmp_path_factory):
    """DATA_DIR with only the Twemoji images of every concept (PNGs copied, nothing rendered),
    planned by the builder exactly as a full build plans them."""
    data_dir = tmp_path_factory.mktemp("twemoji")
    roots = {p.name: extract(p, emoji_cache) for p in {s.package for s in emoji.STYLES} | {EMOJIBASE}}
    concepts = load_concepts(roots[EMOJIBASE.name])
    sources = {s.name: emoji.style_sources(s, roots[s.package.name], concepts) for s in emoji.STYLES}
    jobs, records = emoji.plan(emoji.select_concepts(concepts, sources, None), sources, data_dir)
    keep = [i for i, record in enumerate(records) if record["style"] == TEST_STYLE]
    emoji.run_jobs([jobs[i] for i in keep], workers=1)
    write_index(data_dir / "index.jsonl", [records[i] for i in keep])
    return data_dir


def card_figures() -> dict[str, float]:
    """The model card's evaluation table (the first table of its "## Evaluation" section, so the
    card's other tables never count): row name -> top-1 (and top-5) figures."""
    card = (SHIPPED / "README.md").read_text()
    section = card[card.index("\n## Evaluation") :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    table = re.search(r"^\| set \|.*?(?=\n\n)", section, flags=re.M | re.S).group(0)
    figures = {}
    for row in re.findall(r"^\| ([^|]+?) \| (\d+) \| ([\d.]+)[^|]*\| ([\d.]*) *\|", table, flags=re.M):
        name, _, top1, top5 = row
        figures[f"{name} top-1"] = float(top1)
        if top5:
            figures[f"{name} top-5"] = float(top5)
    return figures


def test_model_card_figures_are_what_the_shipped_weights_measure(twemoji_test_set):
    clip, tokenizer = model.load_pretrained(SHIPPED), model.load_tokenizer(SHIPPED)
    report = clip_eval.emoji_report(clip, tokenizer, twemoji_test_set)
    measured = {}
    for name in ("all", "seen", "unseen"):
        measured[f"{name} concepts top-1"] = report[name]["top1"]
        measured[f"{name} concepts top-5"] = report[name]["top5"]
    measured["10-way everyday set top-1"] = report["everyday"]["top1"]
    measured["paraphrase set, synonyms top-1"] = report["paraphrase"]["synonym_top1"]
    measured["paraphrase set, original names top-1"] = report["paraphrase"]["original_top1"]
    card = card_figures()
    assert set(card) == set(measured)
    for name, value in measured.items():
        assert value == pytest.approx(card[name], abs=0.5), name
    assert report["all"]["n"] >= 1800  # every concept, the unseen ones included


def test_shipped_model_calls_a_twemoji_cat_a_cat_among_the_ten_everyday_labels(twemoji_test_set):
    clip, tokenizer = model.load_pretrained(SHIPPED), model.load_tokenizer(SHIPPED)
    labels = ["cat", "dog", "pizza", "car", "house", "tree", "rocket", "apple", "ball", "book"]
    classes = model.zero_shot.label_embeddings(clip, tokenizer, labels, clip.config.zero_shot_templates)
    pixels = model.preprocess_images(
        [model.load_image(twemoji_test_set / "images" / TEST_STYLE / "1F431.png")], clip.config
    )
    with torch.inference_mode():
        probabilities = clip.similarity_logits(clip.encode_image(pixels), classes).softmax(dim=-1)[0]
    assert labels[probabilities.argmax()] == "cat"


def test_model_card_paraphrase_ceiling_is_what_the_script_measures(twemoji_test_set):
    """The card's "Synonyms" figure (a synonym's top-1 when every image sits on its name's
    embedding) comes from bench/paraphrase_ceiling.py on the shipped weights."""
    card = (SHIPPED / "README.md").read_text()
    stated = float(re.search(r"The synonym then wins\s+top-1 for \*\*([\d.]+) %\*\*", card).group(1))
    printed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paraphrase_ceiling.py"), str(SHIPPED), str(twemoji_test_set)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    measured = float(re.search(r"the synonym wins ([\d.]+) % of (\d+)", printed).group(1))
    assert measured == pytest.approx(stated, abs=0.05)


def test_shipped_checkpoint_fits_the_size_budget():
    assert (SHIPPED / "model.safetensors").stat().st_size <= 64_000_000
    config = model.load_config(SHIPPED)
    assert config.zero_shot_templates and 64 <= config.vision.image_size <= 128
