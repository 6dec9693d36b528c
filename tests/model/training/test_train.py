"""clip-train on real emoji from the builder: a few steps that lower the loss, resume, the
torch-and-numpy-only bundle run, assemble, torchrun with two gloo processes, and the time budget."""

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
from model.pixels import over_white
from model.training import cli, loop, outputs
from model.training.augment import AugmentConfig, augment, jpeg_artifacts
from model.training.optim import TimeBudget
from model.training.towers import TrainedTowers
from tests.model.conftest import TINY_EMBED_DIM
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


def test_a_time_budget_ends_the_run_at_the_end_of_its_sized_schedule(bundle_path, tmp_path, monkeypatch):
    readings = itertools.count()
    clock = lambda: next(readings) * 0.01  # noqa: E731  (each reading 10 ms on: the run is the same on any machine)
    monkeypatch.setattr(loop, "TimeBudget", functools.partial(TimeBudget, clock=clock))
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


def test_the_gpu_recipe_trains_on_the_cpu_for_a_few_steps(bundle_path, tmp_path):
    recipe = json.loads((REPO / "model" / "weights" / "emoji-clip" / "recipe-gpu.json").read_text())
    vision = {**recipe["vision"], "image_size": 32}  # the test bundle is 32 px
    run = loop.train_bundle(
        bundle_path,
        tmp_path,
        {**recipe, "vision": vision, "batch_size": 8, "max_steps": 2, "warmup_steps": 1, "embed_dim": TINY_EMBED_DIM},
    )
    trained_recipe, tensors = outputs.load_trained(run)
    assert (
        trained_recipe.vision["width"] == recipe["vision"]["width"]
        and trained_recipe.max_seconds == recipe["max_seconds"]
    )
    assert json.loads((run / outputs.HISTORY_FILE).read_text())[-1]["step"] == 2
    assert all(torch.isfinite(t).all() for t in tensors.values())
