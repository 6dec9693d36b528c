"""clip-train on real emoji from the builder: pack, a few steps that lower the loss, resume,
the torch-and-numpy-only bundle run, assemble, and torchrun with two gloo processes."""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model
from model.data.index import read_index
from model.errors import ConfigError
from model.training import loop as train
from model.training.augment import AugmentConfig, augment, jpeg_artifacts
from model.training.bundle import MAX_BUNDLE_BYTES, Bundle, load_bundle, pack, pooled_text_features
from model.training.recipe import Recipe
from tests.model.conftest import TINY_EMBED_DIM, TINY_VISION

REPO = Path(__file__).resolve().parents[3]
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


@pytest.fixture(scope="module")
def bundle_path(emoji_data, minilm_base, tmp_path_factory):
    return pack(emoji_data, tmp_path_factory.mktemp("bundle") / "bundle.npz", tiny_recipe(), base=minilm_base)


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


def test_a_few_steps_lower_the_loss(bundle_path, tmp_path):
    run = train.train_bundle(bundle_path, tmp_path, {"epochs": 6, "augment": QUIET})
    history = json.loads((run / train.HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < history[0]["loss"] - 0.3
    assert 0.0 <= history[-1]["val_top1"] <= 1.0


def test_resume_after_an_interruption_matches_an_uninterrupted_run(bundle_path, tmp_path, monkeypatch):
    straight = train.train_bundle(bundle_path, tmp_path / "straight", {"epochs": 3})
    validate, calls = train.validate, []

    def interrupted_in_epoch_3(*args, **kwargs):  # the end of epoch 3 is never reached
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    monkeypatch.setattr(train, "validate", interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.train_bundle(bundle_path, tmp_path / "resumed", {"epochs": 3})
    monkeypatch.setattr(train, "validate", validate)
    assert len(json.loads((tmp_path / "resumed" / train.HISTORY_FILE).read_text())) == 2
    resumed = train.train_bundle(bundle_path, tmp_path / "resumed", {"epochs": 3}, resume=True)
    _, expected = train.load_trained(straight)
    _, got = train.load_trained(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def run_training_cli(launcher: list[str], bundle_path, run_dir, steps: int) -> None:
    """The training CLI, started by ``launcher``, for a few steps on one thread from the repository."""
    arguments = ["--bundle", str(bundle_path), "--out", str(run_dir), "--max-steps", str(steps), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([*launcher, *arguments], cwd=REPO, env=env, check=True, timeout=300)


def test_bundle_training_needs_only_torch_and_numpy_then_assemble_makes_a_checkpoint(
    bundle_path, emoji_data, minilm_base, tmp_path
):
    run_dir, checkpoint = tmp_path / "run", tmp_path / "checkpoint"
    blocked = (
        "import sys; [sys.modules.__setitem__(m, None) for m in ('PIL', 'tokenizers', 'safetensors', 'transformers')]"
    )
    command = f"{blocked}; import runpy; runpy.run_module('model.training', run_name='__main__')"
    run_training_cli([sys.executable, "-c", command], bundle_path, run_dir, steps=3)
    index = json.loads((run_dir / train.TRAINED_INDEX).read_text())
    outputs = {p.name for p in run_dir.iterdir()}
    assert outputs == {*index["shards"], train.TRAINED_INDEX, train.HISTORY_FILE, train.RESUME_FILE}
    assert all((run_dir / name).stat().st_size <= train.MAX_SHARD_BYTES for name in index["shards"])
    _, trained = train.load_trained(run_dir)
    assert {name.split(".")[0] for name in trained} == {
        "image_encoder",
        "image_projection",
        "text_projection",
        "logit_scale",
    }

    assert (
        train.main(["assemble", str(run_dir), str(checkpoint), "--data", str(emoji_data), "--base", str(minilm_base)])
        == 0
    )
    clip, base = model.load_pretrained(checkpoint), model.load_pretrained(minilm_base)
    for name, tensor in clip.state_dict().items():
        expected = trained[name] if name in trained else base.state_dict()[name]
        torch.testing.assert_close(tensor, expected.half().float(), rtol=0, atol=0)  # saved as fp16
    assert clip.config.zero_shot_templates and all("{}" in t for t in clip.config.zero_shot_templates)
    assert (run_dir / "training.png").stat().st_size > 0


def test_trained_tensors_are_sharded_under_the_size_limit(tmp_path, monkeypatch):
    towers = train.TrainedTowers(tiny_recipe(text_width=384))
    monkeypatch.setattr(train, "MAX_SHARD_BYTES", 64 * 1024)
    train.save_trained(towers, tiny_recipe(text_width=384), tmp_path)
    shards = json.loads((tmp_path / train.TRAINED_INDEX).read_text())["shards"]
    assert len(shards) > 1
    _, loaded = train.load_trained(tmp_path)
    for name, tensor in towers.state_dict().items():
        torch.testing.assert_close(loaded[name], tensor)


def test_torchrun_two_gloo_processes_train_two_steps(bundle_path, tmp_path):
    run_dir = tmp_path / "ddp"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "model.training",
    ]
    run_training_cli(launcher, bundle_path, run_dir, steps=2)
    history = json.loads((run_dir / train.HISTORY_FILE).read_text())
    assert history[-1]["step"] == 2
    _, trained = train.load_trained(run_dir)
    assert all(torch.isfinite(t).all() for t in trained.values())


def test_clip_train_reports_a_missing_index_clearly(tmp_path, capsys):
    assert train.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "index.jsonl" in capsys.readouterr().err


def test_contrastive_loss_does_not_push_apart_images_of_one_concept():
    def gradient(concepts):
        logits = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
        loss, accuracy = train.contrastive_loss(logits, torch.tensor(concepts))
        loss.backward()
        return logits.grad, accuracy

    same_concept, accuracy = gradient([7, 7, 3])
    distinct, _ = gradient([1, 2, 3])
    assert same_concept[0, 1] <= 0 < distinct[0, 1]  # image 0 with caption 1: a positive, not a negative
    assert accuracy == 1.0


def test_augment_without_changes_is_compositing_over_white():
    rgba = torch.randint(0, 256, (4, 4, 32, 32), dtype=torch.uint8)
    out = augment(rgba, AugmentConfig(**QUIET), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, train.over_white(rgba), rtol=0, atol=1e-5)  # no flip, no hue change


def test_augment_output_is_rgb_in_range_and_varies():
    rgba = torch.randint(0, 256, (8, 4, 32, 32), dtype=torch.uint8)
    out = augment(rgba, AugmentConfig(blur=1.0, noise=1.0, jpeg=1.0), torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, train.over_white(rgba), atol=0.05)


def test_jpeg_artifacts_grow_as_quality_drops():
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32).contiguous()
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2).float().expand(2, 3, 32, 32)
    image = torch.cat((smooth[:1], checker[:1]))
    high = (jpeg_artifacts(image, torch.tensor([100.0, 100.0])) - image).abs().mean()
    low = (jpeg_artifacts(image, torch.tensor([10.0, 10.0])) - image).abs().mean()
    assert high < 0.01 < low


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


def test_concept_loss_classes_are_the_seen_concepts_only():
    seen, row = train.seen_concepts(two_image_bundle())
    assert seen.tolist() == [0, 1] and row.tolist() == [0, 1, -1]


def test_concept_loss_enters_the_training_loss_and_falls(bundle_path, tmp_path):
    """Same seed, same batches: the weighted concept term changes the loss, and training lowers it."""
    plain = train.train_bundle(bundle_path, tmp_path / "plain", {"epochs": 4, "augment": QUIET})
    with_concepts = train.train_bundle(
        bundle_path, tmp_path / "concepts", {"epochs": 4, "augment": QUIET, "concept_loss_weight": 1.0}
    )
    plain_history = json.loads((plain / train.HISTORY_FILE).read_text())
    concept_history = json.loads((with_concepts / train.HISTORY_FILE).read_text())
    assert concept_history[-1]["loss"] != plain_history[-1]["loss"]
    assert concept_history[-1]["loss"] < concept_history[0]["loss"]


def test_a_time_budget_sizes_the_schedule_from_the_timed_steps():
    now = [0.0]
    budget = train.TimeBudget(100.0, torch.device("cpu"), clock=lambda: now[0])  # started at t = 0
    sized = {}
    for step in range(1, 40):
        now[0] += 0.5 if step <= train.TimeBudget.UNTIMED_STEPS else 0.25  # slow warm-up steps, then 0.25 s each
        sized[step] = budget.total_steps(step, first_step=0)
    # timed: steps 6..25 at 0.25 s; at step 25 the clock reads 5 * 0.5 + 20 * 0.25 = 7.5 s, so the
    # 90 s the budget allows (10 % kept back) leave 82.5 s: 330 more steps
    assert sized[25] == 25 + 330
    assert all(value is None for step, value in sized.items() if step != 25)  # sized once only


def test_a_time_budget_ends_the_run_at_the_end_of_its_sized_schedule(bundle_path, tmp_path, monkeypatch):
    readings = itertools.count()
    clock = lambda: next(readings) * 0.01  # noqa: E731  (each reading 10 ms on: the run is the same on any machine)
    monkeypatch.setattr(train, "TimeBudget", functools.partial(train.TimeBudget, clock=clock))
    run = train.train_bundle(bundle_path, tmp_path, {"epochs": 10_000, "max_seconds": 2.0, "augment": QUIET})
    history = json.loads((run / train.HISTORY_FILE).read_text())
    state = torch.load(run / train.RESUME_FILE, weights_only=True)
    schedule = state["scheduler"]["lr_lambdas"][0]
    assert schedule["total_steps"] == history[-1]["step"]  # sized, then followed to its end
    assert state["scheduler"]["_last_lr"][0] < 0.02 * 3e-3  # the cosine ran down (lr 3e-3 at its peak)
    assert history[-1]["val_top1"] is not None and train.load_trained(run)[1]


def test_save_every_validates_and_saves_only_when_due_and_always_last(bundle_path, tmp_path):
    run = train.train_bundle(bundle_path, tmp_path, {"epochs": 3, "augment": QUIET}, save_every=3600.0)
    history = json.loads((run / train.HISTORY_FILE).read_text())
    assert [entry["val_top1"] is None for entry in history] == [True, True, False]


def test_the_gpu_recipe_trains_on_the_cpu_for_a_few_steps(bundle_path, tmp_path):
    recipe = json.loads((REPO / "model" / "weights" / "emoji-clip" / "recipe-gpu.json").read_text())
    vision = {**recipe["vision"], "image_size": 32}  # the test bundle is 32 px
    run = train.train_bundle(
        bundle_path,
        tmp_path,
        {**recipe, "vision": vision, "batch_size": 8, "max_steps": 2, "warmup_steps": 1, "embed_dim": TINY_EMBED_DIM},
    )
    trained_recipe, tensors = train.load_trained(run)
    assert (
        trained_recipe.vision["width"] == recipe["vision"]["width"]
        and trained_recipe.max_seconds == recipe["max_seconds"]
    )
    assert json.loads((run / train.HISTORY_FILE).read_text())[-1]["step"] == 2
    assert all(torch.isfinite(t).all() for t in tensors.values())


# image i's logits against caption j; images of three different concepts. Not symmetric: by rows
# (image -> text) image 1 is closest to caption 0, by columns (text -> image) every caption is
# closest to its own image.
ASYMMETRIC_LOGITS = [[3.0, 0.0, 0.0], [2.0, 1.0, 0.5], [0.0, 0.0, 4.0]]


def cross_entropy_by_hand(rows: list[list[float]]) -> float:
    """Mean over rows of -log softmax(row)[i] for row i (its own caption, or image, is the target)."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / len(rows)


def test_contrastive_loss_averages_both_directions_and_accuracy_is_image_to_text():
    loss, accuracy = train.contrastive_loss(torch.tensor(ASYMMETRIC_LOGITS), torch.tensor([4, 5, 6]))
    columns = [list(column) for column in zip(*ASYMMETRIC_LOGITS)]
    expected = (cross_entropy_by_hand(ASYMMETRIC_LOGITS) + cross_entropy_by_hand(columns)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(2 / 3)  # rows 0 and 2 pick their own caption, row 1 caption 0


def test_trained_towers_clamp_the_temperature_at_100():
    torch.manual_seed(0)
    towers = train.TrainedTowers(tiny_recipe(text_width=8))
    pixels, texts = torch.randn(2, 3, 32, 32), torch.randn(3, 8)
    with torch.no_grad():
        towers.logit_scale.fill_(math.log(1000.0))  # a scale training pushed past ln 100
        (logits,) = towers(pixels, texts)
        cosines = towers.embed_images(pixels) @ towers.embed_texts(texts).t()
    torch.testing.assert_close(logits, 100.0 * cosines, rtol=1e-6, atol=1e-5)
