"""clip-train: train a CLIP's image side against a frozen text tower (LiT with the text side locked).

    clip-train [train] DATA_DIR OUT [--recipe JSON] [--epochs N] ...   # pack + train + assemble here
    clip-train pack DATA_DIR BUNDLE [--recipe JSON]                     # self-contained bundle (model/training/bundle.py)
    python -m model.training --bundle BUNDLE --out RUN_DIR                 # torch + numpy only; torchrun works
    clip-train assemble RUN_DIR CHECKPOINT [--data DATA_DIR]            # + the MiniLM text tower -> checkpoint

Trained: the ViT, both projections and the temperature (logit_scale, clamped at ln 100), with a
symmetric InfoNCE loss in which images of the same concept in a batch count as positives of each
other, plus (recipe.concept_loss_weight) each image against the class prompt of every seen concept.
AdamW, linear warmup then cosine decay, bf16 autocast on CUDA and on CPUs with bf16 units. RUN_DIR gets, after every
epoch: the trained tensors (trained-*.pt shards of at most 16 MiB, trained.json naming them),
history.json, and resume.pt (optimizer state, for --resume). Under torchrun each process takes
its share of every batch; DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..clip import MAX_LOGIT_SCALE
from ..config import CLIP_MEAN, CLIP_STD, VisionConfig
from ..errors import ModelError
from ..vision import ViT
from .augment import AugmentConfig, augment
from .bundle import Bundle, load_bundle
from .recipe import Recipe

MAX_SHARD_BYTES = 16 * 1024 * 1024
MAX_RESIDENT_IMAGE_BYTES = 4 * 2**30  # a bigger training set stays in host memory, copied batch by batch
TRAINED_INDEX = "trained.json"
HISTORY_FILE = "history.json"
RESUME_FILE = "resume.pt"


class TrainedTowers(nn.Module):
    """The trained part of a CLIP, under the same parameter names, so its state_dict drops into one."""

    def __init__(self, recipe: Recipe):
        super().__init__()
        vision = VisionConfig(**recipe.vision)
        self.image_encoder = ViT(vision)
        self.image_projection = nn.Linear(vision.width, recipe.embed_dim, bias=False)
        self.text_projection = nn.Linear(recipe.text_width, recipe.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(recipe.logit_scale_init)))

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.image_encoder(pixels)), dim=-1)

    def embed_texts(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(pooled), dim=-1)

    def forward(self, pixels: torch.Tensor, *pooled_texts: torch.Tensor) -> list[torch.Tensor]:
        """Normalised pixels (B, 3, S, S) and sets of pooled text features (K, T) -> for each set,
        the images' logits against its texts (B, K). One call, so DistributedDataParallel sees
        every parameter the losses use."""
        temperature = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        images = self.embed_images(pixels)
        return [temperature * images @ self.embed_texts(texts).t() for texts in pooled_texts]


def contrastive_loss(logits: torch.Tensor, concepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE; two images of one concept are each other's positives (their captions
    describe both), so targets spread evenly over a row's same-concept columns.
    Returns the loss and the image->text top-1 accuracy."""
    same = (concepts[:, None] == concepts[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss = (F.cross_entropy(logits.float(), targets) + F.cross_entropy(logits.float().t(), targets)) / 2
    accuracy = same.gather(1, logits.argmax(dim=1, keepdim=True)).mean()
    return loss, accuracy


def seen_concepts(bundle: Bundle) -> tuple[torch.Tensor, torch.Tensor]:
    """(concepts with training images, and for every concept its row among them or -1): the
    concept loss's classes. Unseen concepts stay out, their names as unknown as their images."""
    seen = torch.unique(bundle.train_concepts)
    row = torch.full((len(bundle.class_features),), -1, dtype=torch.long)
    row[seen] = torch.arange(len(seen))
    return seen, row


def training_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for float32. "auto": bfloat16 on CUDA, and on CPUs with native
    bfloat16 matrix units (avx512_bf16 / amx_bf16), where it is several times faster than float32."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None


def attention_kernel(math_attention: bool):
    """The plain-math attention where asked (on CPU, train_bundle asks): at these short sequences the
    fused CPU kernel's backward pass took 44 % of a bf16 training step under torch.profiler."""
    return sdpa_kernel(SDPBackend.MATH) if math_attention else contextlib.nullcontext()


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pixels: torch.Tensor,
    caption_features: torch.Tensor,
    concepts: torch.Tensor,
    concept_weight: float = 0.0,
    concept_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    autocast_dtype: torch.dtype | None = None,
    math_attention: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns (loss, batch top-1). ``concept_targets`` (the seen
    concepts' class-prompt features, each concept's row among them: seen_concepts) adds the concept
    loss with ``concept_weight``; without it no concept logits are computed."""
    device = pixels.device
    text_sets = [caption_features] + ([concept_targets[0]] if concept_targets is not None else [])
    with (
        torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
        attention_kernel(math_attention),
    ):
        logits, *concept_logits = model(pixels, *text_sets)
    loss, accuracy = contrastive_loss(logits, concepts.to(device))
    if concept_targets is not None:
        rows = concept_targets[1][concepts].to(device)
        loss = loss + concept_weight * F.cross_entropy(concept_logits[0].float(), rows)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, accuracy


class WarmupCosine:
    """Linear warmup, then cosine decay to zero at ``total_steps``. A callable object rather than a
    closure so LambdaLR keeps it in its state (for --resume), and so a time budget can set
    ``total_steps`` once the step rate is known."""

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TimeBudget:
    """Sizes a schedule to Recipe.max_seconds: times the steps after the first few (allocator and
    kernel warm-up), then says how many steps in all fit in what is left, keeping a share back
    for validation and saving."""

    UNTIMED_STEPS = 5
    TIMED_STEPS = 20
    RESERVE = 0.1

    def __init__(self, seconds: float, device: torch.device, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.device, self.clock = seconds, device, clock
        self.started = clock()
        self.timing_from: tuple[int, float] | None = None

    def elapsed(self) -> float:
        return self.clock() - self.started

    def exhausted(self) -> bool:
        return self.elapsed() >= self.seconds

    def total_steps(self, steps_done: int, first_step: int) -> int | None:
        """Called after every step: None until the timed steps are done, then the whole run's step count."""
        timed = steps_done - first_step - self.UNTIMED_STEPS
        if timed not in (0, self.TIMED_STEPS):
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the queued kernels belong to the steps being timed
        now = self.clock()
        if timed == 0:
            self.timing_from = (steps_done, now)
            return None
        assert self.timing_from is not None  # set when timed == 0, one call earlier
        first, then = self.timing_from
        per_step = (now - then) / (steps_done - first)
        left = (1 - self.RESERVE) * self.seconds - self.elapsed()
        return steps_done + max(0, int(left / per_step))


def make_optimizer(towers: TrainedTowers, recipe: Recipe) -> torch.optim.AdamW:
    """Weight decay on matrices only (not on biases, norms, embeddings' offsets or the temperature)."""
    decay = [p for p in towers.parameters() if p.ndim >= 2 and p is not towers.image_encoder.pos_embed]
    rest = [p for p in towers.parameters() if all(p is not q for q in decay)]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    fused = next(towers.parameters()).device.type == "cuda"  # one kernel for all parameters instead of dozens
    return torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=(0.9, 0.98), eps=1e-6, fused=fused)


def normalize(rgb: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> the CLIP-normalised input that model.preprocess produces at serving time."""
    mean = torch.tensor(CLIP_MEAN, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def over_white(rgba: torch.Tensor) -> torch.Tensor:
    """uint8 RGBA -> [0, 1] RGB composited over white, as model.preprocess.to_rgb does."""
    x = rgba.float() / 255.0
    return x[:, :3] * x[:, 3:] + (1 - x[:, 3:])


@torch.no_grad()
def validate(towers: TrainedTowers, bundle: Bundle, device: torch.device, batch_size: int = 512) -> float | None:
    """Top-1 of the validation-style images over every concept's class prompt."""
    if len(bundle.val_images) == 0:
        return None
    classes = towers.embed_texts(bundle.class_features.to(device))
    correct = 0
    for start in range(0, len(bundle.val_images), batch_size):
        pixels = normalize(over_white(bundle.val_images[start : start + batch_size].to(device)))
        predicted = (towers.embed_images(pixels) @ classes.t()).argmax(dim=1).cpu()
        correct += int((predicted == bundle.val_concepts[start : start + batch_size]).sum())
    return correct / len(bundle.val_images)


# ----------------------------------------------------------------------------- distributed


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


# ----------------------------------------------------------------------------- outputs


def _progress_values(
    loss: torch.Tensor, accuracy: torch.Tensor, scheduler: torch.optim.lr_scheduler.LRScheduler, towers: TrainedTowers
) -> Callable[[], dict[str, float]]:
    """This step's figures, read only when a progress line is printed (reading a GPU value waits for it)."""
    return lambda: {
        "loss": loss.item(),
        "acc": accuracy.item(),
        "lr": float(scheduler.get_last_lr()[0]),
        "scale": towers.logit_scale.exp().item(),
    }


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
    _write_json(run_dir / TRAINED_INDEX, {"recipe": recipe.to_dict(), "shards": names})


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


def _write_json(path: Path, data) -> None:
    path.with_name(path.name + ".partial").write_text(json.dumps(data, indent=2) + "\n")
    os.replace(path.with_name(path.name + ".partial"), path)


class Progress:
    """One status line per training run: redrawn in place on a terminal (at most every
    ``REDRAW_INTERVAL`` s); in a log, a line at each tenth of an epoch and at its end, at most one
    every ``LOG_INTERVAL`` seconds (a GPU runs an epoch in a second)."""

    LOG_INTERVAL = 5.0
    REDRAW_INTERVAL = 0.2

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last_line = -math.inf
        self.epoch(0, "")

    def epoch(self, total: int, label: str) -> None:
        self.total, self.label, self.started = total, label, time.perf_counter()

    def update(self, done: int, images: int, values: Callable[[], dict[str, float]]) -> None:
        """``values`` is called only when a line is printed: reading a loss off a GPU waits for it."""
        now = time.perf_counter()
        due = (
            (now - self.last_line >= self.REDRAW_INTERVAL or done == self.total)
            if self.tty
            else (
                (done == self.total or done % max(1, self.total // 10) == 0)
                and now - self.last_line >= self.LOG_INTERVAL
            )
        )
        if not self.enabled or not due:
            return
        self.last_line = now
        width = 24
        bar = "#" * (width * done // self.total) + "." * (width - width * done // self.total)
        rate = images / max(1e-9, now - self.started)
        stats = " ".join(f"{k} {v:.4g}" for k, v in values().items())
        line = f"{self.label} [{bar}] {done}/{self.total} {stats} {rate:.0f} img/s"
        print(
            ("\r" + line) if self.tty else line,
            end="" if self.tty and done < self.total else "\n",
            file=sys.stderr,
            flush=True,
        )


# ----------------------------------------------------------------------------- the training loop


def train_bundle(
    bundle_path: str | Path,
    run_dir: str | Path,
    overrides: dict | None = None,
    resume: bool = False,
    precision: str = "auto",
    save_every: float = 0.0,
) -> Path:
    """Train from a bundle into RUN_DIR. Returns RUN_DIR. Validation and saving happen after an
    epoch once ``save_every`` seconds have passed since the last (0: after every epoch), and
    always after the last."""
    rank, world, device = setup_distributed()
    run_dir = Path(run_dir)
    bundle = load_bundle(bundle_path)
    overrides = dict(overrides or {})
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
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
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
    if resume and (run_dir / RESUME_FILE).exists():
        state = torch.load(run_dir / RESUME_FILE, map_location=device, weights_only=True)
        towers.load_state_dict(state["towers"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        total_steps = schedule.total_steps  # as the interrupted run had sized it
        history, start_epoch = state["history"], state["epoch"]
        if rank == 0:
            print(f"resumed {run_dir} after epoch {start_epoch}", file=sys.stderr)
    model = nn.parallel.DistributedDataParallel(towers) if world > 1 else towers
    augment_config = AugmentConfig(**recipe.augment)
    draws = bundle.caption_draws(recipe.caption_sampling)
    concept_targets = None
    if recipe.concept_loss_weight:
        seen, concept_row = seen_concepts(bundle)
        concept_targets = (bundle.class_features[seen].to(device), concept_row.to(device))
    # a training set that fits (the emoji set: 119 MiB of uint8) lives on the device: no copy per step
    resident = device if bundle.train_images.numel() <= MAX_RESIDENT_IMAGE_BYTES else torch.device("cpu")
    train_images, caption_features = bundle.train_images.to(resident), bundle.caption_features.to(device)
    train_concepts = bundle.train_concepts.to(device)
    autocast_dtype = training_precision(device, precision)
    budget = TimeBudget(recipe.max_seconds, device) if recipe.max_seconds else None
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
            indices = order[batch * recipe.batch_size : (batch + 1) * recipe.batch_size][rank::world][:per_process]
            captions = bundle.sample_captions(indices, generator, draws)
            pixels = train_images[indices.to(resident)].to(device)
            indices = indices.to(device)
            pixels = normalize(augment(pixels, augment_config, _device_generator(device, generator)))
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
            progress.update(
                batch + 1,
                (batch + 1) * recipe.batch_size,
                _progress_values(loss, accuracy, scheduler, towers),
            )
            if budget is not None:
                sized = budget.total_steps(step, first_step)
                if sized is not None:
                    total_steps = schedule.total_steps = min(total_steps, sized)
                    if rank == 0:
                        print(
                            f"time budget: {total_steps} steps in all ({total_steps / steps_per_epoch:.0f} epochs)",
                            file=sys.stderr,
                        )
                if budget.exhausted():  # the estimate ran short: end here, and a --resume will not go on
                    total_steps = schedule.total_steps = step
            if step >= total_steps:
                break
        finished = step >= total_steps or epoch + 1 == recipe.epochs
        history.append(
            {
                "epoch": epoch + 1,
                "step": step,
                "loss": torch.stack(losses).mean().item(),
                "train_accuracy": torch.stack(accuracies).mean().item(),
                "val_top1": None,
                "seconds": time.perf_counter() - progress.started,
            }
        )
        if rank == 0 and (finished or time.perf_counter() - last_save >= save_every):
            towers.eval()
            history[-1]["val_top1"] = validate(towers, bundle, device)
            print(f"epoch {epoch + 1}: " + json.dumps(history[-1]), file=sys.stderr, flush=True)
            save_trained(towers, recipe, run_dir)
            _write_json(run_dir / HISTORY_FILE, history)
            torch.save(
                {
                    "towers": towers.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "epoch": epoch + 1,
                },
                run_dir / f"{RESUME_FILE}.partial",
            )
            os.replace(run_dir / f"{RESUME_FILE}.partial", run_dir / RESUME_FILE)
            last_save = time.perf_counter()
        if world > 1:
            dist.barrier()
        if finished:
            break
    if world > 1:
        dist.destroy_process_group()
    return run_dir


def _device_generator(device: torch.device, seeded_from: torch.Generator) -> torch.Generator:
    """Augmentation randomness on the batch's device, seeded from the epoch's generator."""
    seed = int(torch.randint(0, 2**62, (1,), generator=seeded_from))
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------- assemble (full install)


def assemble(
    run_dir: str | Path,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    base: str | Path | None = None,
    templates: list[str] | None = None,
) -> Path:
    """Trained tensors + the frozen text tower -> a checkpoint directory (fp16 safetensors).
    With DATA_DIR, zero_shot_templates are the candidates that do best on the validation style."""
    import tempfile

    from ..checkpoint import check_state_dict, save_pretrained
    from .bundle import base_model
    from .plot import plot_history

    recipe, tensors = load_trained(run_dir)
    with tempfile.TemporaryDirectory() as scratch:  # the base's vocab.txt lives here until saved
        clip, tokenizer = base_model(recipe, base, scratch)
        state = clip.state_dict()
        unknown = sorted(set(tensors) - set(state))
        if unknown:
            raise ModelError(f"trained tensors in {run_dir} that the checkpoint lacks: {', '.join(unknown[:5])}")
        check_state_dict(clip, {**state, **tensors}, source=str(run_dir))
        clip.load_state_dict({**state, **tensors})
        clip.eval()
        if templates:
            clip.config.zero_shot_templates = list(templates)
        elif data_dir is not None:
            from ..eval import choose_templates

            clip.config.zero_shot_templates = choose_templates(clip, tokenizer, data_dir)
        out = save_pretrained(clip, tokenizer, out_dir, dtype=torch.float16)
    history_path = Path(run_dir) / HISTORY_FILE
    if history_path.exists():
        plot_history(json.loads(history_path.read_text()), Path(run_dir) / "training.png")
    return out


# ----------------------------------------------------------------------------- command line


def _recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        type=Path,
        help="JSON file of Recipe fields (model/training/recipe.py); "
        "for a bundle, training fields that change the bundle's recipe",
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--seed", type=int)


def _precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="autocast dtype; auto: bf16 on CUDA and on CPUs with bf16 units, else fp32",
    )


def _overrides(args) -> dict:
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_steps": args.max_steps,
        "seed": args.seed,
    }


def _recipe_changes(args) -> dict:
    data = json.loads(args.recipe.read_text()) if args.recipe else {}
    Recipe.from_dict(data)  # names only known fields
    return {**data, **{k: v for k, v in _overrides(args).items() if v is not None}}


def _recipe(args) -> Recipe:
    return Recipe.from_dict(_recipe_changes(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip-train",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", parents=[common], help="pack DATA_DIR into OUT/bundle.npz, train into OUT/run, assemble OUT/checkpoint"
    )
    train.add_argument("data_dir", type=Path)
    train.add_argument("out", type=Path)
    train.add_argument("--resume", action="store_true", help="continue OUT/run from its last finished epoch")
    _precision_argument(train)
    train.add_argument("--base", type=Path, help="checkpoint whose text tower to use (default: all-MiniLM-L6-v2)")
    _recipe_arguments(train)

    pack = commands.add_parser("pack", parents=[common], help="write a self-contained training bundle")
    pack.add_argument("data_dir", type=Path)
    pack.add_argument("bundle", type=Path)
    pack.add_argument("--base", type=Path, help="checkpoint whose text tower to use (default: all-MiniLM-L6-v2)")
    _recipe_arguments(pack)

    bundle = commands.add_parser(
        "bundle", parents=[common], help="train from a bundle (what `python -m model.training --bundle` runs)"
    )
    bundle.add_argument("--bundle", type=Path, required=True)
    bundle.add_argument("--out", type=Path, required=True, help="RUN_DIR for the trained tensors")
    bundle.add_argument("--resume", action="store_true")
    bundle.add_argument(
        "--save-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="validate and save after an epoch only once this long has passed since the last "
        "(default 0: every epoch; the last is always saved)",
    )
    _precision_argument(bundle)
    _recipe_arguments(bundle)

    assemble_parser = commands.add_parser(
        "assemble", parents=[common], help="trained tensors + text tower -> checkpoint directory"
    )
    assemble_parser.add_argument("run_dir", type=Path)
    assemble_parser.add_argument("out", type=Path)
    assemble_parser.add_argument(
        "--data", type=Path, help="DATA_DIR: choose zero-shot templates on its validation style"
    )
    assemble_parser.add_argument("--templates", nargs="+", help="set zero_shot_templates instead of choosing them")
    assemble_parser.add_argument(
        "--base", type=Path, help="checkpoint whose text tower to use (default: all-MiniLM-L6-v2)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("train", "pack", "bundle", "assemble", "-h", "--help"):
        # python -m model.training --bundle BUNDLE ...; otherwise train is the default command
        argv.insert(0, "bundle" if any(a.split("=")[0] == "--bundle" for a in argv) else "train")
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.command == "pack":
            from .bundle import pack

            pack(args.data_dir, args.bundle, _recipe(args), args.base)
        elif args.command == "bundle":
            train_bundle(args.bundle, args.out, _recipe_changes(args), args.resume, args.precision, args.save_every)
        elif args.command == "assemble":
            print(f"wrote {assemble(args.run_dir, args.out, args.data, args.base, args.templates)}")
        else:
            from .bundle import pack

            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ModelError(
                    "under torchrun, pack first (clip-train pack DATA_DIR BUNDLE), "
                    "then run python -m model.training --bundle BUNDLE --out RUN_DIR"
                )
            bundle = args.out / "bundle.npz"
            if not (args.resume and bundle.exists()):
                pack(args.data_dir, bundle, _recipe(args), args.base)
            train_bundle(bundle, args.out / "run", _overrides(args), args.resume, args.precision)
            print(f"wrote {assemble(args.out / 'run', args.out / 'checkpoint', args.data_dir, args.base)}")
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
