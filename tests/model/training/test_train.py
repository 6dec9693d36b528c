"""clip-train on real emoji from the builder: a few steps that lower the loss, resume, the
torch-and-numpy-only bundle run, assemble, torchrun with two gloo processes, and the time budget."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import model
from model.data.index import read_index
from model.errors import ModelError
from model.pixels import over_white
from model.training import cli, loop, outputs
from model.training.augment import AugmentConfig, augment, jpeg_artifacts
from model.training.bundle import load_bundle, write_bundle
from model.training.optim import BUDGET_CLOCKS, TimeBudget, make_optimizer
from model.training.recipe import Recipe
from model.training.towers import TrainedTowers
from tests.model.conftest import TINY_EMBED_DIM, TINY_VISION
from tests.model.training.conftest import QUIET, tiny_recipe

REPO = Path(__file__).resolve().parents[3]


def test_a_few_steps_lower_the_loss(bundle_path, tmp_path):
    run = loop.train_bundle(bundle_path, tmp_path, {"epochs": 6, "augment": QUIET})
    history = json.loads((run / outputs.HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < history[0]["loss"] - 0.3
    last = history[-1]
    assert 0.0 <= last["val_top1"] <= last["val_top5"] <= 1.0 and last["val_top5"] > 0
    assert 0.0 < last["val_loss"] and math.isfinite(last["val_loss"])


def test_a_few_steps_with_the_small_data_tower_lower_the_loss(bundle_path, tmp_path):
    """The convolutional stem and token pooling train end to end, and the run assembles the same way."""
    vision = {**TINY_VISION, "stem": "convolutional", "pool_after": 1}
    run = loop.train_bundle(bundle_path, tmp_path, {"epochs": 6, "augment": QUIET, "vision": vision})
    history = json.loads((run / outputs.HISTORY_FILE).read_text())
    assert history[-1]["loss"] < history[0]["loss"] - 0.3
    recipe, tensors = outputs.load_trained(run)
    assert recipe.vision["stem"] == "convolutional" and "image_encoder.token_pool.conv.weight" in tensors


def test_resume_after_an_interruption_matches_an_uninterrupted_run(bundle_path, tmp_path, monkeypatch):
    straight = loop.train_bundle(bundle_path, tmp_path / "straight", {"epochs": 3})
    validate, calls = loop.validate, []

    def interrupted_in_epoch_3(*args, **kwargs):  # the end of epoch 3 is never reached
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        loop.train_bundle(bundle_path, tmp_path / "resumed", {"epochs": 3})
    monkeypatch.setattr(loop, "validate", validate)
    assert len(json.loads((tmp_path / "resumed" / outputs.HISTORY_FILE).read_text())) == 2
    resumed = loop.train_bundle(bundle_path, tmp_path / "resumed", {"epochs": 3}, resume=True)
    _, expected = outputs.load_trained(straight)
    _, got = outputs.load_trained(resumed)
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
    index = json.loads((run_dir / outputs.TRAINED_INDEX).read_text())
    written = {p.name for p in run_dir.iterdir()}
    assert written == {*index["shards"], outputs.TRAINED_INDEX, outputs.HISTORY_FILE, outputs.RESUME_FILE}
    assert all((run_dir / name).stat().st_size <= outputs.MAX_SHARD_BYTES for name in index["shards"])
    _, trained = outputs.load_trained(run_dir)
    assert {name.split(".")[0] for name in trained} == {
        "image_encoder",
        "image_projection",
        "text_projection",
        "logit_scale",
    }

    assert (
        cli.main(["assemble", str(run_dir), str(checkpoint), "--data", str(emoji_data), "--base", str(minilm_base)])
        == 0
    )
    clip, base = model.load_pretrained(checkpoint), model.load_pretrained(minilm_base)
    for name, tensor in clip.state_dict().items():
        expected = trained[name] if name in trained else base.state_dict()[name]
        torch.testing.assert_close(tensor, expected.half().float(), rtol=0, atol=0)  # saved as fp16
    assert clip.config.zero_shot_templates and all("{}" in t for t in clip.config.zero_shot_templates)
    assert (run_dir / "training.png").stat().st_size > 0


def test_trained_tensors_are_sharded_under_the_size_limit(tmp_path, monkeypatch):
    towers = TrainedTowers(tiny_recipe(text_width=384))
    monkeypatch.setattr(outputs, "MAX_SHARD_BYTES", 64 * 1024)
    outputs.save_trained(towers, tiny_recipe(text_width=384), tmp_path)
    shards = json.loads((tmp_path / outputs.TRAINED_INDEX).read_text())["shards"]
    assert len(shards) > 1
    _, loaded = outputs.load_trained(tmp_path)
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
    history = json.loads((run_dir / outputs.HISTORY_FILE).read_text())
    assert history[-1]["step"] == 2
    _, trained = outputs.load_trained(run_dir)
    assert all(torch.isfinite(t).all() for t in trained.values())


def test_clip_train_reports_a_missing_index_clearly(tmp_path, capsys):
    assert cli.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "index.jsonl" in capsys.readouterr().err


def test_augment_without_changes_is_compositing_over_white():
    rgba = torch.randint(0, 256, (4, 4, 32, 32), dtype=torch.uint8)
    out = augment(rgba, AugmentConfig(**QUIET), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, over_white(rgba), rtol=0, atol=1e-5)  # no flip, no hue change


def test_augment_output_is_rgb_in_range_and_varies():
    rgba = torch.randint(0, 256, (8, 4, 32, 32), dtype=torch.uint8)
    out = augment(rgba, AugmentConfig(blur=1.0, noise=1.0, jpeg=1.0), torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, over_white(rgba), atol=0.05)


def test_jpeg_artifacts_grow_as_quality_drops():
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(2, 3, 32, 32).contiguous()
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2).float().expand(2, 3, 32, 32)
    image = torch.cat((smooth[:1], checker[:1]))
    high = (jpeg_artifacts(image, torch.tensor([100.0, 100.0])) - image).abs().mean()
    low = (jpeg_artifacts(image, torch.tensor([10.0, 10.0])) - image).abs().mean()
    assert high < 0.01 < low


def test_concept_loss_enters_the_training_loss_and_falls(bundle_path, tmp_path):
    """Same seed, same batches: the weighted concept term changes the loss, and training lowers it."""
    plain = loop.train_bundle(bundle_path, tmp_path / "plain", {"epochs": 4, "augment": QUIET})
    with_concepts = loop.train_bundle(
        bundle_path, tmp_path / "concepts", {"epochs": 4, "augment": QUIET, "concept_loss_weight": 1.0}
    )
    plain_history = json.loads((plain / outputs.HISTORY_FILE).read_text())
    concept_history = json.loads((with_concepts / outputs.HISTORY_FILE).read_text())
    assert concept_history[-1]["loss"] != plain_history[-1]["loss"]
    assert concept_history[-1]["loss"] < concept_history[0]["loss"]


def test_a_time_budget_sizes_the_schedule_from_the_timed_steps():
    now = [0.0]
    budget = TimeBudget(100.0, torch.device("cpu"), clock=lambda: now[0])  # started at t = 0
    sized = {}
    for step in range(1, 40):
        now[0] += 0.5 if step <= TimeBudget.UNTIMED_STEPS else 0.25  # slow warm-up steps, then 0.25 s each
        sized[step] = budget.total_steps(step, first_step=0)
    # timed: steps 6..25 at 0.25 s; at step 25 the clock reads 5 * 0.5 + 20 * 0.25 = 7.5 s, so the
    # 90 s the budget allows (10 % kept back) leave 82.5 s: 330 more steps
    assert sized[25] == 25 + 330
    assert all(value is None for step, value in sized.items() if step != 25)  # sized once only


@pytest.mark.parametrize(("clock", "exhausted"), [("wall", True), ("cpu", False)])
def test_a_cpu_time_budget_does_not_count_the_time_a_process_waits(clock, exhausted):
    budget = TimeBudget(0.2, torch.device("cpu"), BUDGET_CLOCKS[clock])
    time.sleep(0.3)  # waiting, as a process does while other jobs hold the cores
    assert budget.exhausted() is exhausted


def test_a_time_budget_ends_the_run_at_the_end_of_its_sized_schedule(bundle_path, tmp_path, monkeypatch):
    readings = itertools.count()
    clock = lambda: next(readings) * 0.01  # noqa: E731  (each reading 10 ms on: the run is the same on any machine)
    monkeypatch.setitem(BUDGET_CLOCKS, "wall", clock)
    run = loop.train_bundle(bundle_path, tmp_path, {"epochs": 10_000, "max_seconds": 2.0, "augment": QUIET})
    history = json.loads((run / outputs.HISTORY_FILE).read_text())
    state = torch.load(run / outputs.RESUME_FILE, weights_only=True)
    schedule = state["scheduler"]["lr_lambdas"][0]
    assert schedule["total_steps"] == history[-1]["step"]  # sized, then followed to its end
    assert state["scheduler"]["_last_lr"][0] < 0.02 * 3e-3  # the cosine ran down (lr 3e-3 at its peak)
    assert history[-1]["val_top1"] is not None and outputs.load_trained(run)[1]


def test_save_every_validates_and_saves_only_when_due_and_always_last(bundle_path, tmp_path):
    run = loop.train_bundle(bundle_path, tmp_path, {"epochs": 3, "augment": QUIET}, save_every=3600.0)
    history = json.loads((run / outputs.HISTORY_FILE).read_text())
    for key in ("val_top1", "val_top5", "val_loss"):
        assert [entry[key] is None for entry in history] == [True, True, False]


@pytest.mark.parametrize("recipe_file", ["recipe.json", "recipe-gpu.json"])
def test_the_shipped_recipes_train_on_the_cpu_for_a_few_steps(bundle_path, tmp_path, recipe_file):
    """Both shipped recipes (CPU and GPU), on the small test bundle: every field they set still loads
    and trains, so neither rots between the rare runs that use them in full."""
    recipe = json.loads((REPO / "model" / "weights" / "emoji-clip" / recipe_file).read_text())
    vision = {**recipe["vision"], "image_size": 32}  # the test bundle is 32 px
    run = loop.train_bundle(
        bundle_path,
        tmp_path,
        {**recipe, "vision": vision, "batch_size": 8, "max_steps": 2, "warmup_steps": 1, "embed_dim": TINY_EMBED_DIM},
    )
    trained_recipe, tensors = outputs.load_trained(run)
    assert trained_recipe.vision["width"] == recipe["vision"]["width"] and trained_recipe.max_seconds == recipe.get(
        "max_seconds"
    )
    assert json.loads((run / outputs.HISTORY_FILE).read_text())[-1]["step"] == 2
    assert all(torch.isfinite(t).all() for t in tensors.values())


# ----------------------------------------------------------------------------- greyscale and the label-colour rule


def test_pack_marks_the_concepts_that_depend_on_colour_and_greyscale_spares_their_images(bundle_path, emoji_data):
    bundle = load_bundle(bundle_path)
    records = read_index(emoji_data / "index.jsonl")
    row = {key: row for row, key in enumerate(dict.fromkeys(r["concept"] for r in records))}
    flags = bundle.concept_colour_named
    assert flags.dtype == torch.bool and flags.shape == (len(bundle.class_features),)
    assert flags[row["2764"]] and flags[row["1F34E"]]  # red heart, red apple
    assert not flags[row["1F431"]] and not flags[row["1F600"]]  # cat face, grinning face

    keep_colour = flags[bundle.train_concepts]
    quiet_grey = AugmentConfig(**QUIET, greyscale=1.0)
    out = augment(bundle.train_images, quiet_grey, torch.Generator().manual_seed(0), keep_colour)
    red_hearts = bundle.train_concepts == row["2764"]
    assert red_hearts.any() and keep_colour.any() and not keep_colour.all()
    torch.testing.assert_close(out[keep_colour], over_white(bundle.train_images[keep_colour]), rtol=0, atol=1e-5)
    grey = out[~keep_colour]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_the_training_loop_spares_the_colour_named_concepts_of_each_batch(bundle_path, tmp_path, monkeypatch):
    """The real augment and training step, each call's arguments kept: greyscale's mask is the
    bundle's flags of the very concepts the step trains on."""
    masks, batches = [], []

    def augment_keeping_mask(pixels, config, generator, keep_colour):
        masks.append(keep_colour.cpu())
        return augment(pixels, config, generator, keep_colour)

    def step_keeping_concepts(model, optimizer, pixels, captions, concepts, *rest, **options):
        batches.append(concepts.cpu())
        return training_step(model, optimizer, pixels, captions, concepts, *rest, **options)

    training_step = loop.training_step
    monkeypatch.setattr(loop, "augment", augment_keeping_mask)
    monkeypatch.setattr(loop, "training_step", step_keeping_concepts)
    style = dict(outline=0.5, posterize=0.5, random_convolution=0.5, greyscale=0.5)
    run = loop.train_bundle(bundle_path, tmp_path, {"max_steps": 6, "augment": style})
    assert json.loads((run / outputs.HISTORY_FILE).read_text())[-1]["step"] == 6
    flags = load_bundle(bundle_path).concept_colour_named
    assert len(masks) == len(batches) == 6 and any(mask.any() for mask in masks)
    for mask, concepts in zip(masks, batches):
        assert torch.equal(mask, flags[concepts])


def test_greyscale_on_a_bundle_packed_before_the_colour_flags_is_a_clear_error(bundle_path, tmp_path):
    with np.load(bundle_path) as arrays:
        older = {name: arrays[name] for name in arrays.files if name not in ("recipe", "concept_colour_named")}
    old_bundle = write_bundle(tmp_path / "old.npz", load_bundle(bundle_path).recipe, older)
    assert load_bundle(old_bundle).concept_colour_named is None
    loop.train_bundle(old_bundle, tmp_path / "plain", {"max_steps": 1})  # still trains without greyscale
    with pytest.raises(ModelError, match="pack it again"):
        loop.train_bundle(old_bundle, tmp_path / "grey", {"max_steps": 1, "augment": {"greyscale": 0.5}})


# ----------------------------------------------------------------------------- the text projection


def test_a_text_projection_held_at_the_identity_stays_there_and_is_not_optimised(bundle_path, tmp_path):
    """Trained with 'identity', the saved text projection is exactly the identity (the images were
    fitted to the text tower's own space); 'learned' changes it."""
    recipe = load_bundle(bundle_path).recipe
    changes = {"max_steps": 3, "augment": QUIET, "embed_dim": recipe.text_width}
    _, held = outputs.load_trained(
        loop.train_bundle(bundle_path, tmp_path / "held", {**changes, "text_projection": "identity"})
    )
    _, learned = outputs.load_trained(loop.train_bundle(bundle_path, tmp_path / "learned", changes))
    assert torch.equal(held["text_projection.weight"], torch.eye(recipe.text_width))
    assert not torch.equal(held["image_projection.weight"], learned["image_projection.weight"])
    towers = TrainedTowers(Recipe.from_dict({**recipe.to_dict(), **changes, "text_projection": "identity"}))
    optimised = {id(p) for group in make_optimizer(towers, recipe).param_groups for p in group["params"]}
    assert id(towers.text_projection.weight) not in optimised and id(towers.image_projection.weight) in optimised


def test_an_identity_text_projection_needs_equal_widths(bundle_path):
    recipe = load_bundle(bundle_path).recipe
    with pytest.raises(ModelError, match="embed_dim equal to the text width"):
        TrainedTowers(
            Recipe.from_dict({**recipe.to_dict(), "embed_dim": recipe.text_width + 1, "text_projection": "identity"})
        )
