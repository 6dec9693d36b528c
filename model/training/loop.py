"""The training loop: train_bundle, read top to bottom. Needs only torch and numpy; under torchrun
each process takes its share of every batch and DistributedDataParallel averages the gradients."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ModelError
from .augment import AugmentConfig, augment
from .bundle import Bundle, load_bundle
from .loss import seen_concepts
from .optim import BUDGET_CLOCKS, TimeBudget, WarmupCosine, make_optimizer
from .outputs import load_resume_state, save_run
from .progress import Progress, step_values
from .recipe import Recipe
from .step import training_precision, training_step
from .towers import TrainedTowers
from .validate import validate

MAX_RESIDENT_IMAGE_BYTES = 4 * 2**30  # a bigger training set stays in host memory, copied batch by batch


def train_bundle(
    bundle_path: str | Path,
    run_dir: str | Path,
    overrides: dict | None = None,
    resume: bool = False,
    precision: str = "auto",
    save_every: float = 0.0,
    budget_clock: str = "wall",
) -> Path:
    """Train from a bundle into RUN_DIR. Returns RUN_DIR. Validation and saving happen after an
    epoch once ``save_every`` seconds have passed since the last (0: after every epoch), and
    always after the last. ``budget_clock`` (optim.BUDGET_CLOCKS) is what Recipe.max_seconds counts."""
    # the processes, the bundle, and its recipe with this run's changes
    rank, world, device = setup_distributed()
    run_dir = Path(run_dir)
    bundle = load_bundle(bundle_path)
    recipe = run_recipe(bundle, overrides or {}, world)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)

    # the model, its optimizer and schedule: fresh from the seed, or where an interrupted run saved them
    torch.manual_seed(recipe.seed)
    towers = TrainedTowers(recipe).to(device)
    optimizer = make_optimizer(towers, recipe)
    per_process = recipe.batch_size // world
    steps_per_epoch = len(bundle.train_images) // (per_process * world)
    if steps_per_epoch == 0:
        raise ModelError(f"{len(bundle.train_images)} training images do not fill one batch of {recipe.batch_size}")
    total_steps = recipe.epochs * steps_per_epoch
    if recipe.max_steps:
        total_steps = min(total_steps, recipe.max_steps)
    schedule = WarmupCosine(recipe.warmup_steps, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history, start_epoch = [], 0
    state = load_resume_state(run_dir, device) if resume else None
    if state is not None:
        towers.load_state_dict(state["towers"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        total_steps = schedule.total_steps  # as the interrupted run had sized it
        history, start_epoch = state["history"], state["epoch"]
        if rank == 0:
            print(f"resumed {run_dir} after epoch {start_epoch}", file=sys.stderr)
    model = nn.parallel.DistributedDataParallel(towers) if world > 1 else towers

    # the data: a training set that fits (the emoji set: 119 MiB of uint8) lives on the device
    augment_config = AugmentConfig(**recipe.augment)
    keep_colour = concepts_keeping_colour(bundle, augment_config, device)
    draws = bundle.caption_draws(recipe.caption_sampling)
    concept_targets = None
    if recipe.concept_loss_weight:
        seen, concept_row = seen_concepts(bundle)
        concept_targets = (bundle.class_features[seen].to(device), concept_row.to(device))
    resident = device if bundle.train_images.numel() <= MAX_RESIDENT_IMAGE_BYTES else torch.device("cpu")
    train_images, caption_features = bundle.train_images.to(resident), bundle.caption_features.to(device)
    train_concepts = bundle.train_concepts.to(device)
    autocast_dtype = training_precision(device, precision)
    budget = TimeBudget(recipe.max_seconds, device, BUDGET_CLOCKS[budget_clock]) if recipe.max_seconds else None
    if rank == 0:
        print(
            f"training in {autocast_dtype or torch.float32} on {device}"
            + (f", {recipe.max_seconds:g} s budget" if budget else ""),
            file=sys.stderr,
        )

    step = first_step = scheduler.last_epoch
    last_save = time.perf_counter()
    progress = Progress(rank == 0)
    for epoch in range(start_epoch, recipe.epochs):
        if step >= total_steps:
            break
        generator = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)  # same order in every process
        order = torch.randperm(len(bundle.train_images), generator=generator)
        towers.train()
        progress.epoch(min(steps_per_epoch, total_steps - step), f"epoch {epoch + 1}/{recipe.epochs}")
        losses, accuracies = [], []
        for batch in range(progress.total):
            # this process's share of the batch, a caption drawn for each image, augmented on the device
            indices = order[batch * recipe.batch_size : (batch + 1) * recipe.batch_size][rank::world][:per_process]
            captions = bundle.sample_captions(indices, generator, draws)
            pixels = train_images[indices.to(resident)].to(device)
            indices = indices.to(device)
            colour_named = None if keep_colour is None else keep_colour[train_concepts[indices]]
            pixels = augment(pixels, augment_config, _device_generator(device, generator), colour_named)
            pixels = towers.normalize(pixels)
            loss, accuracy = training_step(
                model,
                optimizer,
                pixels,
                caption_features[captions.to(device)],
                train_concepts[indices],
                recipe.concept_loss_weight,
                concept_targets,
                autocast_dtype,
                math_attention=device.type == "cpu",
            )
            scheduler.step()
            step += 1
            losses.append(loss.detach())
            accuracies.append(accuracy.detach())
            progress.update(batch + 1, (batch + 1) * recipe.batch_size, step_values(loss, accuracy, scheduler, towers))
            if budget is not None:
                total_steps = schedule.total_steps = budgeted_total_steps(
                    budget, step, first_step, total_steps, steps_per_epoch, verbose=rank == 0
                )
            if step >= total_steps:
                break

        # the epoch's figures; validation and a save when due, and always after the last epoch
        finished = step >= total_steps or epoch + 1 == recipe.epochs
        history.append(
            {
                "epoch": epoch + 1,
                "step": step,
                "loss": torch.stack(losses).mean().item(),
                "train_accuracy": torch.stack(accuracies).mean().item(),
                "val_top1": None,
                "val_top5": None,
                "val_loss": None,
                "seconds": time.perf_counter() - progress.started,
            }
        )
        if rank == 0 and (finished or time.perf_counter() - last_save >= save_every):
            towers.eval()
            validation = validate(towers, bundle, device)
            if validation is not None:
                history[-1].update(validation.history_fields())
            print(f"epoch {epoch + 1}: " + json.dumps(history[-1]), file=sys.stderr, flush=True)
            save_run(run_dir, towers, recipe, optimizer, scheduler, history, epoch + 1)
            last_save = time.perf_counter()
        if world > 1:
            dist.barrier()
        if finished:
            break
    if world > 1:
        dist.destroy_process_group()
    return run_dir


def concepts_keeping_colour(bundle: Bundle, config: AugmentConfig, device: torch.device) -> torch.Tensor | None:
    """(C,) bool on ``device``: the concepts greyscale must not touch (None while greyscale is off)."""
    if not config.greyscale:
        return None
    if bundle.concept_colour_named is None:
        raise ModelError(
            "greyscale needs the bundle's concept_colour_named (which concepts depend on colour), and this "
            "bundle was packed before it existed: pack it again"
        )
    return bundle.concept_colour_named.to(device)


def run_recipe(bundle: Bundle, overrides: dict, world: int) -> Recipe:
    """The bundle's recipe with this run's changes (a partial ``vision`` changes only its fields),
    refused where the run could not follow it."""
    overrides = dict(overrides)
    if overrides.get("vision"):
        overrides["vision"] = {**bundle.recipe.vision, **overrides["vision"]}
    recipe = bundle.recipe.updated(**overrides)
    if recipe.max_seconds and world > 1:
        raise ModelError(
            "max_seconds sizes the schedule from one process's step rate: under torchrun, set epochs or max_steps"
        )
    if recipe.vision["image_size"] != bundle.train_images.shape[-1]:
        raise ModelError(
            f"the bundle's images are {bundle.train_images.shape[-1]} px but the recipe asks for "
            f"image_size {recipe.vision['image_size']}: pack again with that recipe"
        )
    return recipe


def budgeted_total_steps(
    budget: TimeBudget, step: int, first_step: int, total_steps: int, steps_per_epoch: int, verbose: bool
) -> int:
    """The run's step count after ``step``: sized once by the budget's timed steps, cut short at
    ``step`` if the budget is spent (the estimate ran short: a --resume will not go on)."""
    sized = budget.total_steps(step, first_step)
    if sized is not None:
        total_steps = min(total_steps, sized)
        if verbose:
            print(
                f"time budget: {total_steps} steps in all ({total_steps / steps_per_epoch:.0f} epochs)", file=sys.stderr
            )
    return step if budget.exhausted() else total_steps


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
    return (dist.get_rank() if world > 1 else 0), world, torch.device(f"cuda:{local_rank}" if cuda else "cpu")


def _device_generator(device: torch.device, seeded_from: torch.Generator) -> torch.Generator:
    """Augmentation randomness on the batch's device, seeded from the epoch's generator."""
    seed = int(torch.randint(0, 2**62, (1,), generator=seeded_from))
    return torch.Generator(device=device).manual_seed(seed)
