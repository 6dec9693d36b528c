"""What a training run leaves in RUN_DIR, each file replaced whole (never half written):

trained-NNNNN-of-NNNNN.pt   the trained tensors, float32 shards of at most MAX_SHARD_BYTES
trained.json                the recipe and the shards' names (load_trained reads both)
history.json                one entry per epoch: loss, train_accuracy, val_top1/val_top5/val_loss...
resume.pt                   towers, optimizer and scheduler state, history and epoch (--resume)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import ModelError
from .recipe import Recipe
from .towers import TrainedTowers

MAX_SHARD_BYTES = 16 * 1024 * 1024
TRAINED_INDEX = "trained.json"
HISTORY_FILE = "history.json"
RESUME_FILE = "resume.pt"


def save_run(
    run_dir: Path,
    towers: TrainedTowers,
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict],
    epoch: int,
) -> None:
    """The trained tensors, the history, and the state a --resume goes on from after ``epoch``."""
    save_trained(towers, recipe, run_dir)
    write_json(run_dir / HISTORY_FILE, history)
    state = {
        "towers": towers.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": history,
        "epoch": epoch,
    }
    torch.save(state, run_dir / f"{RESUME_FILE}.partial")
    os.replace(run_dir / f"{RESUME_FILE}.partial", run_dir / RESUME_FILE)


def load_resume_state(run_dir: Path, device: torch.device) -> dict | None:
    """What save_run left for --resume, or None when the run has not saved yet."""
    if not (run_dir / RESUME_FILE).exists():
        return None
    return torch.load(run_dir / RESUME_FILE, map_location=device, weights_only=True)


def save_trained(towers: TrainedTowers, recipe: Recipe, run_dir: Path) -> None:
    """The trained tensors as float32 shards of at most 16 MiB, and trained.json naming them."""
    shards: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in towers.state_dict().items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > MAX_SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor.detach().float().cpu().contiguous()
        size += nbytes
    shards.append(current)
    names = [f"trained-{i + 1:05d}-of-{len(shards):05d}.pt" for i in range(len(shards))]
    for old in run_dir.glob("trained-*.pt"):
        if old.name not in names:
            old.unlink()
    for name, shard in zip(names, shards):  # every shard written before any replaces the last save's
        torch.save(shard, run_dir / f"{name}.partial")
    for name in names:
        os.replace(run_dir / f"{name}.partial", run_dir / name)
    write_json(run_dir / TRAINED_INDEX, {"recipe": recipe.to_dict(), "shards": names})


def load_trained(run_dir: str | Path) -> tuple[Recipe, dict[str, torch.Tensor]]:
    run_dir = Path(run_dir)
    try:
        index = json.loads((run_dir / TRAINED_INDEX).read_text())
        tensors = {}
        for name in index["shards"]:
            tensors.update(torch.load(run_dir / name, map_location="cpu", weights_only=True))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"{run_dir} holds no complete training output ({TRAINED_INDEX} + shards): {error}") from error
    return Recipe.from_dict(index["recipe"]), tensors


def write_json(path: Path, data) -> None:
    path.with_name(path.name + ".partial").write_text(json.dumps(data, indent=2) + "\n")
    os.replace(path.with_name(path.name + ".partial"), path)
