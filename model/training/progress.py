"""The training run's status line on stderr."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import torch

from .towers import TrainedTowers


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


def step_values(
    loss: torch.Tensor, accuracy: torch.Tensor, scheduler: torch.optim.lr_scheduler.LRScheduler, towers: TrainedTowers
) -> Callable[[], dict[str, float]]:
    """This step's figures, read only when a progress line is printed (reading a GPU value waits for it)."""
    return lambda: {
        "loss": loss.item(),
        "acc": accuracy.item(),
        "lr": float(scheduler.get_last_lr()[0]),
        "scale": towers.logit_scale.exp().item(),
    }
