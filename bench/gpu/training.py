"""Step 2: train the default model with the GPU recipe from the carried bundle (see
bench/gpu/prepare.py), inside the recipe's time budget. The trained tensors come back for
`clip-train assemble` on the CPU host; the run directory is RUN_DIR (bench/gpu/run.py copies
trained-*.pt, trained.json and history.json out of it).

    python3 bench/gpu/training.py --result training.json --run-dir RUN_DIR [--dry-run]

--dry-run trains the GPU recipe's tower for a few small steps on a synthetic bundle written in
the real format (the carried one is 25 MiB of real emoji; CI has none), with a budget so short
that the time-budget path runs too.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CARRY, ROOT, Results, log, setting, step_arguments

from model.training.bundle import write_bundle
from model.training.loop import train_bundle
from model.training.outputs import HISTORY_FILE
from model.training.recipe import Recipe

GPU_RECIPE = ROOT / "model" / "weights" / "emoji-clip" / "recipe-gpu.json"
BUNDLE = CARRY / "bundle.npz"
SAVE_EVERY_SECONDS = 30.0
DRY_RUN_CHANGES = {"batch_size": 8, "max_steps": 30, "max_seconds": 20.0, "warmup_steps": 5}


def synthetic_bundle(path: Path, recipe: Recipe, images: int = 64, concepts: int = 10, captions: int = 20) -> Path:
    """Random drawings and text features in the bundle's real layout (model/training/bundle.py)."""
    rng = np.random.default_rng(0)
    size = recipe.vision["image_size"]
    per_image = 2
    return write_bundle(
        path,
        recipe,
        {
            "train_images": rng.integers(0, 256, (images, size, size, 4), dtype=np.uint8),
            "train_concepts": rng.integers(0, concepts, images).astype(np.int32),
            "caption_offsets": np.arange(0, per_image * images + 1, per_image, dtype=np.int64),
            "caption_index": rng.integers(0, captions, per_image * images).astype(np.int32),
            "caption_features": rng.standard_normal((captions, recipe.text_width)).astype(np.float16),
            "val_images": rng.integers(0, 256, (16, size, size, 4), dtype=np.uint8),
            "val_concepts": rng.integers(0, concepts, 16).astype(np.int32),
            "class_features": rng.standard_normal((concepts, recipe.text_width)).astype(np.float16),
            "concept_colour_named": np.arange(concepts) % 3 == 0,
        },
    )


def training_images_per_s(history: list[dict], batch_size: int) -> float:
    """Training images per second over a run: every step's batch, over the epochs' own seconds
    (validation and saving left out)."""
    return round(history[-1]["step"] * batch_size / sum(entry["seconds"] for entry in history), 1)


def main() -> None:
    parser = step_arguments(__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()
    results = Results(args.result)
    recipe_changes = json.loads(GPU_RECIPE.read_text())
    results["recipe"] = str(GPU_RECIPE.relative_to(ROOT))
    results["device"] = setting(args.dry_run).device
    if args.dry_run:
        recipe_changes.update(DRY_RUN_CHANGES)
        bundle = synthetic_bundle(
            Path(tempfile.mkdtemp(prefix="gpu-dry-run-")) / "bundle.npz", Recipe.from_dict(recipe_changes)
        )
        results["bundle"] = "synthetic (dry run)"
    else:
        bundle = BUNDLE
        if not bundle.is_file():
            raise SystemExit(f"{bundle} not found: run bench/gpu/prepare.py on the CPU host before the call")
        results["bundle"] = {"path": str(bundle.relative_to(ROOT)), "bytes": bundle.stat().st_size}
    log(f"training from {bundle} into {args.run_dir}")
    started = time.perf_counter()
    train_bundle(bundle, args.run_dir, recipe_changes, save_every=SAVE_EVERY_SECONDS)
    results["seconds"] = round(time.perf_counter() - started, 1)
    history = json.loads((args.run_dir / HISTORY_FILE).read_text())
    results["steps"] = history[-1]["step"]
    results["epochs"] = history[-1]["epoch"]
    results["images_per_s"] = training_images_per_s(history, recipe_changes["batch_size"])
    results["final"] = {key: history[-1][key] for key in ("loss", "train_accuracy", "val_top1")}
    results["val_top1_by_epoch"] = {
        entry["epoch"]: entry["val_top1"] for entry in history if entry["val_top1"] is not None
    }


if __name__ == "__main__":
    main()
