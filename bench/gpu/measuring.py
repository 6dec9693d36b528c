"""What the tower and engine steps share beyond common.py: an entry in the results that records a
reason instead of ending the step, a time budget, batch sizes scaled down for the dry run, the
service's defaults, images/s and peak device memory.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from common import Results, Setting, log

STARTED = time.perf_counter()  # about when the step started: imported before the step builds anything


class Skip(Exception):
    """Why an entry is not measured (recorded as its ``skipped`` reason)."""


class Entry:
    """One measured configuration: a dict in the results, written to disk at every figure. An entry
    that holds only its description was cut off (the step's cap) before its first figure."""

    def __init__(self, results: Results, key: str, **description: Any):
        self.results = results
        self.key = key
        self.data: dict[str, Any] = dict(description)
        self.described = set(description)
        self.results[key] = self.data

    def record(self, **figures: Any) -> None:
        self.data.update(figures)
        self.results[self.key] = self.data

    @property
    def failed(self) -> bool:
        return "skipped" in self.data or "stopped" in self.data

    @contextmanager
    def guarded(self) -> Iterator[Entry]:
        """Runs the block; a failure or a Skip becomes this entry's reason and the step goes on.
        ``skipped`` when nothing was measured yet, ``stopped`` when some figures are already in."""
        try:
            yield self
        except Exception as error:  # one entry's failure (a compile, an import, OOM) must not end the step
            if isinstance(error, Skip):
                reason = str(error)
            else:
                log(traceback.format_exc())
                reason = f"failed: {type(error).__name__}: {error}".strip()
                FAILED_ENTRIES.append(self.key)
            measured = any(key not in self.described for key in self.data)
            self.record(**{"stopped" if measured else "skipped": reason})
            log(f"{self.key}: {'stopped' if measured else 'skipped'}: {reason}")


FAILED_ENTRIES: list[str] = []  # entries that raised (not a Skip): the step reports them and exits 1


def exit_status(results: Results) -> int:
    """The step's exit code: 1 when an entry failed, so bench/gpu/run.py marks the step 'failed'."""
    if FAILED_ENTRIES:
        results["failed_entries"] = list(FAILED_ENTRIES)
    return 1 if FAILED_ENTRIES else 0


@contextmanager
def entry(results: Results, key: str, **description: Any) -> Iterator[Entry]:
    """A new Entry, guarded: ``with entry(results, "name", batch=32) as e: ... e.record(...)``."""
    with Entry(results, key, **description).guarded() as new:
        yield new


class Budget:
    """The seconds a step allows itself (its cap, less a margin), counted from the step's start."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - STARTED)

    def require(self, seconds: float, what: str) -> None:
        """Skip ``what`` rather than start it when less than ``seconds`` are left."""
        if self.left() < seconds:
            raise Skip(
                f"not started: {what} needs about {seconds:.0f} s and {max(0.0, self.left()):.0f} s "
                f"of the step's {self.seconds:.0f} s budget are left"
            )


def quiet_threads(setting: Setting) -> None:
    """Under --dry-run, one intra-op thread: the tiny shapes gain nothing from more, and on a shared
    2-core machine a busy neighbour stalls each multi-threaded op for a scheduler slice (~100 ms)."""
    if setting.dry_run:
        torch.set_num_threads(1)


def scaled_batch(setting: Setting, batch: int) -> int:
    """A real batch size, or under --dry-run an eighth of it, at most 8 (1, 32, 256 -> 1, 4, 8)."""
    return batch if not setting.dry_run else min(8, max(1, batch // 8))


def service_default(name: str) -> Any:
    """A default of app/settings.py (max_batch, batch_wait_ms, ...), so the steps follow the service."""
    from app.settings import Settings

    return Settings.model_fields[name].default


def engine_max_batch(setting: Setting) -> int:
    return scaled_batch(setting, service_default("max_batch"))


def images_per_s(batch: int, timings: list[float]) -> float:
    """Images per second from the median of per-call timings (seconds)."""
    return round(batch / statistics.median(timings), 2)


def milliseconds(timings: list[float]) -> dict[str, float]:
    """p50, p99 and n of timings in seconds, as milliseconds."""
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50": round(statistics.median(ordered) * 1000, 3), "p99": round(p99 * 1000, 3), "n": len(ordered)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


class PeakMemory:
    """torch.cuda.max_memory_allocated over a block, reset at its start; no figures off CUDA.

    ``peak_memory_mib`` is everything allocated at the peak (other models' weights included);
    ``peak_above_resident_mib`` is what the block itself added (activations, workspaces)."""

    def __init__(self, setting: Setting):
        self.cuda = setting.cuda
        self.resident = self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.resident = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()

    def figures(self) -> dict[str, float]:
        if not self.cuda:
            return {}
        mib = 2**20
        return {
            "peak_memory_mib": round(self.peak / mib, 1),
            "peak_above_resident_mib": round((self.peak - self.resident) / mib, 1),
        }


def describe_host(setting: Setting) -> dict[str, Any]:
    """Where the figures come from: the device, the library versions, the CPU count."""
    described = {
        "device": setting.device,
        "dry_run": setting.dry_run,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if setting.cuda:
        described.update(
            gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported()
        )
    return described
