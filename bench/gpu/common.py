"""What every step of the GPU command shares: where things are, the device and sizes a step runs
at (real on a GPU, tiny under --dry-run), random checkpoints made by the library's save path,
and a result file that is rewritten after every figure, so a step killed at its cap still
leaves what it measured.

A step is a script `python3 bench/gpu/<step>.py --result FILE.json [--dry-run]`; bench/gpu/run.py
runs the steps in order, each under its own time cap, and merges their result files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.load import LABELS  # noqa: E402,F401  (the ten everyday labels every step classifies against)

# What bench/gpu/prepare.py copies for the trip (the GPU host has no ../shared and no network).
CARRY = Path(os.environ.get("CLIP_GPU_CARRY", ROOT / ".carry"))  # what bench/gpu/prepare.py writes
SEED_DIRS = (ROOT.parent / "shared" / "seed", CARRY / "seed")
VOCAB = ROOT / "model" / "weights" / "emoji-clip" / "vocab.txt"  # tracked: travels with the tree

# ViT-B/16 at 224 px (FLAVA's image tower, the seed's default) and a MiniLM-size text tower:
# what the GPU figures are measured on. The dry run uses the tiny shapes of the tests.
BASE_SHAPE = dict(
    vision=dict(image_size=224, patch_size=16, width=768, num_layers=12, num_heads=12, mlp_dim=3072),
    text=dict(
        width=384,
        num_layers=6,
        num_heads=12,
        mlp_dim=1536,
        max_len=512,
        context_length=77,
        dropout=0.0,
        layer_norm_eps=1e-12,
        activation="gelu",
        positions="learned",
        embedding_norm=True,
        pooling="mean",
    ),
    embed_dim=512,
)
TINY_SHAPE = dict(
    vision=dict(image_size=32, patch_size=8, width=32, num_layers=2, num_heads=2, mlp_dim=64),
    text=dict(width=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=64, context_length=16, dropout=0.0),
    embed_dim=24,
)
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def import_seed():
    """The seed's own code (seed_clip.py), from ../shared or from the carried copy."""
    for directory in SEED_DIRS:
        if (directory / "seed_clip.py").is_file():
            sys.path.insert(0, str(directory))
            import seed_clip

            return seed_clip
    raise ImportError(
        f"seed_clip.py not found in {' or '.join(map(str, SEED_DIRS))}: "
        "run bench/gpu/prepare.py, which copies it into .carry/seed"
    )


@dataclass
class Setting:
    """Where and how big a step runs."""

    dry_run: bool
    device: str  # "cuda" or "cpu"
    shape: dict  # BASE_SHAPE or TINY_SHAPE

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def setting(dry_run: bool) -> Setting:
    import torch

    cuda = torch.cuda.is_available() and not dry_run
    return Setting(dry_run, "cuda" if cuda else "cpu", TINY_SHAPE if dry_run else BASE_SHAPE)


def random_checkpoint(directory: Path, shape: dict, seed: int = 0, logit_scale: float | None = None) -> Path:
    """A checkpoint of ``shape`` with random weights, written by model.save_pretrained (fp32)."""
    import torch

    import model

    torch.manual_seed(seed)
    config = model.CLIPConfig.from_dict({**shape, "zero_shot_templates": TEMPLATES})
    clip = model.CLIP(config).eval()
    if logit_scale is not None:
        with torch.no_grad():
            clip.logit_scale.fill_(logit_scale)
    tokenizer = model.Tokenizer(VOCAB, config.text.context_length, config.text.vocab_size)
    return model.save_pretrained(clip, tokenizer, directory)


class Results:
    """A JSON object on disk, rewritten (atomically) after every change."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {}
        self.write()

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.write()

    def write(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(partial, self.path)


def step_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--result", type=Path, required=True, help="JSON file the step's figures go to")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to prove the step runs")
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds after which the step starts no new measurement (bench/gpu/run.py passes its cap less a margin)",
    )
    return parser


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def time_calls(call: Callable[[], Any], setting: Setting, iterations: int, warmup: int = 2) -> list[float]:
    """Seconds per call, each synchronised, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    setting.sync()
    timings = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        setting.sync()
        timings.append(time.perf_counter() - started)
    return timings
