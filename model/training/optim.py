"""Optimisation: AdamW with weight decay on matrices only, linear warmup then cosine decay, and a
wall-time budget that sizes that schedule to the host's step rate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from .recipe import Recipe
from .towers import TrainedTowers


def make_optimizer(towers: TrainedTowers, recipe: Recipe) -> torch.optim.AdamW:
    """Weight decay on matrices only (not on biases, norms, embeddings' offsets or the temperature)."""
    trained = [p for p in towers.parameters() if p.requires_grad]  # not a text projection held at the identity
    decay = [p for p in trained if p.ndim >= 2 and p is not towers.image_encoder.pos_embed]
    rest = [p for p in trained if all(p is not q for q in decay)]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    fused = next(towers.parameters()).device.type == "cuda"  # one kernel for all parameters instead of dozens
    return torch.optim.AdamW(groups, lr=recipe.learning_rate, betas=(0.9, 0.98), eps=1e-6, fused=fused)


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


BUDGET_CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    # this process's CPU time: on a machine other jobs share, every run gets the same compute
    # (one thread: CPU seconds are core seconds), however much of the machine the others take
    "cpu": time.process_time,
}


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
