"""Recipe variants side by side on one GPU: the GPU recipe and changes to it, each trained in its
own process at the same time, for the same wall-time budget, from the carried bundle.

    python3 bench/gpu/variants.py OUT_DIR --budget SECONDS [--dry-run] [--only NAME ...]
    python3 bench/gpu/variants.py OUT_DIR --pack RUN_DIR    # RUN_DIR -> OUT_DIR/RUN_DIR's name.tar

Run after bench/gpu.sh in the same call, with what is left of it. The variants share the GPU, so
each takes fewer steps than the recipe alone; "control" (the recipe unchanged) trains under the
same contention, so each change is judged against it, and the one that wins on the validation
style can still be compared with the recipe's solo run (bench/gpu.sh's training step).

Writes OUT_DIR/variants.json (each variant's steps, images/s and last validation) and, for each
variant that finished, OUT_DIR/variant-NAME.tar: trained.json, history.json and the trained
tensors cast to float16 (what assembly saves anyway; half the bytes, so three variants fit the
eight files and 16 MiB per file a lent host returns). Untar it into a folder and run
`clip-train assemble FOLDER ...` on the CPU host. --pack does the same to another run directory
(bench/gpu.sh's training step), so the whole call's outputs fit those eight files.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, log
from training import BUNDLE, DRY_RUN_CHANGES, GPU_RECIPE, synthetic_bundle, training_images_per_s

from model.training.loop import train_bundle
from model.training.outputs import HISTORY_FILE, TRAINED_INDEX
from model.training.recipe import Recipe

STYLE_AUGMENT = {"outline": 0.25, "posterize": 0.25, "random_convolution": 0.25, "greyscale": 0.1}
VARIANTS = {
    "control": {},
    "identity-text": {"text_projection": "identity"},
    "style-augment": {"augment": STYLE_AUGMENT},
}


def variant_recipe(base: dict, changes: dict) -> dict:
    """The base recipe with the variant's changes; an augment dict is merged, not replaced."""
    merged = {**base, **changes}
    if "augment" in changes:
        merged["augment"] = {**base.get("augment", {}), **changes["augment"]}
    return merged


def train_variant(bundle: Path, run_dir: Path, changes: dict) -> None:
    train_bundle(bundle, run_dir, changes, save_every=30.0)


def summarise(run_dir: Path, seconds: float, batch_size: int) -> dict:
    history_path = run_dir / HISTORY_FILE
    if not history_path.is_file():
        return {"status": "no history", "seconds": seconds}
    history = json.loads(history_path.read_text())
    last = history[-1]
    return {
        "status": "ok" if (run_dir / TRAINED_INDEX).is_file() else "no trained tensors",
        "seconds": seconds,
        "steps": last["step"],
        "epochs": last["epoch"],
        "images_per_s": training_images_per_s(history, batch_size),
        "final": {key: last.get(key) for key in ("loss", "train_accuracy", "val_top1", "val_top5", "val_loss")},
    }


def pack_half(run_dir: Path, tar_path: Path) -> None:
    """trained.json, history.json and the shards into one tar, the shards' floating tensors cast to
    float16 (in place: the run directory's shards are float16 afterwards)."""
    index = json.loads((run_dir / TRAINED_INDEX).read_text())
    for shard in index["shards"]:
        tensors = torch.load(run_dir / shard, map_location="cpu", weights_only=True)
        halved = {key: value.half() if value.is_floating_point() else value for key, value in tensors.items()}
        torch.save(halved, run_dir / shard)
    with tarfile.open(tar_path, "w") as tar:
        for name in (TRAINED_INDEX, HISTORY_FILE, *index["shards"]):
            tar.add(run_dir / name, arcname=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget", type=float, help="each variant's training seconds")
    parser.add_argument("--dry-run", action="store_true", help="tiny steps on a synthetic bundle, on the CPU")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants alone")
    parser.add_argument("--pack", type=Path, metavar="RUN_DIR", help="only pack this finished run, train nothing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.pack:
        pack_half(args.pack, args.out / f"{args.pack.name}.tar")
        return
    if args.budget is None:
        parser.error("--budget is required unless --pack is given")
    scratch = Path(tempfile.mkdtemp(prefix="gpu-variants-"))
    base = json.loads(GPU_RECIPE.read_text())
    base["max_seconds"] = args.budget
    bundle = BUNDLE
    if args.dry_run:
        base.update({**DRY_RUN_CHANGES, "max_seconds": args.budget})
        bundle = synthetic_bundle(scratch / "bundle.npz", Recipe.from_dict(base))
    elif not bundle.is_file():
        raise SystemExit(f"{bundle} not found: run bench/gpu/prepare.py on the CPU host before the call")
    names = args.only or list(VARIANTS)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked into
    started = time.perf_counter()
    processes = {}
    for name in names:
        recipe = variant_recipe(base, VARIANTS[name])
        processes[name] = context.Process(target=train_variant, args=(bundle, scratch / name, recipe), name=name)
        processes[name].start()
        log(f"variant {name}: started, {json.dumps(VARIANTS[name])}")
    results = {"budget_seconds": args.budget, "recipe": str(GPU_RECIPE.relative_to(ROOT)), "variants": {}}
    for name, process in processes.items():
        process.join()
        seconds = round(time.perf_counter() - started, 1)
        record = summarise(scratch / name, seconds, base["batch_size"])
        record["exit_code"] = process.exitcode
        record["changes"] = VARIANTS[name]
        if record["status"] == "ok":
            pack_half(scratch / name, args.out / f"variant-{name}.tar")
        results["variants"][name] = record
        log(f"variant {name}: {json.dumps(record)}")
        (args.out / "variants.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
