"""Image-tower ablation at equal CPU time: each variant trains from the same bundle for the same wall
time, then is ranked on the validation style (top-5 and loss: short runs sit near chance on top-1).

    python bench/ablation.py BUNDLE OUT_DIR                      # every variant, 15 CPU-minutes each, 2 at a time
    python bench/ablation.py BUNDLE OUT_DIR --variants patch-16 conv-8-pool-2 --minutes 20
    python bench/ablation.py BUNDLE OUT_DIR --report-only        # the table from runs already made
    python bench/ablation.py BUNDLE OUT_DIR --report-only --paraphrases DATA_DIR   # + synonyms, val style

A variant is the recipe's image tower with a few VisionConfig fields changed (VARIANTS), or the
recipe with other fields changed (augmentations, the text projection). Each run is
``clip-train bundle --threads 1 --budget-clock cpu`` with ``max_seconds``: the loop times its first
steps and sizes its warmup and cosine schedule to end when the process has used that much CPU time.
On a machine other jobs share (``nice`` is not honoured in this sandbox), a wall-time budget would
give each variant whatever the others left it; CPU time on one thread gives every variant the same
compute. ``--parallel`` runs go at once, one per core.

Writes OUT_DIR/VARIANT/ (the run), OUT_DIR/results.json and prints a Markdown table: validation
top-5, top-1, loss; training images/s (fp32, the loop's own steps, from bench/train_step.py's
measure on a random batch); parameters; MFLOPs per image (forward, torch's FLOP counter). With
``--paraphrases DATA_DIR`` each run is also assembled into a checkpoint (OUT_DIR/VARIANT/checkpoint,
the recipe's validation template) and scored by clip-eval's paraphrase set on the validation style:
top-1 with each paired concept named by a synonym no caption contains, against the original names.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_step import measure  # noqa: E402

import model  # noqa: E402
from model.config import VisionConfig  # noqa: E402
from model.data.emoji_catalog import VALIDATION_STYLE  # noqa: E402
from model.eval import emoji_report  # noqa: E402
from model.training.assemble import assemble  # noqa: E402
from model.training.bundle import Bundle, load_bundle  # noqa: E402
from model.training.outputs import HISTORY_FILE, load_trained  # noqa: E402
from model.training.recipe import Recipe  # noqa: E402
from model.training.towers import TrainedTowers  # noqa: E402
from model.training.validate import validate  # noqa: E402
from model.vision import ViT  # noqa: E402

# recipe changes per variant; "vision" entries change the bundle recipe's image tower
VARIANTS: dict[str, dict] = {
    "patch-16": {"vision": {"patch_size": 16}},
    "patch-8": {"vision": {"patch_size": 8}},
    "conv-16": {"vision": {"patch_size": 16, "stem": "convolutional"}},
    "conv-8-pool-2": {"vision": {"patch_size": 8, "stem": "convolutional", "pool_after": 2}},
    "conv-8": {"vision": {"patch_size": 8, "stem": "convolutional"}},
    "patch-8-pool-2": {"vision": {"patch_size": 8, "pool_after": 2}},
    # the chosen tower (patch-16) with the style-randomising augmentations, or its image embeddings
    # trained into the frozen text tower's own space
    "patch-16-style-augment": {
        "vision": {"patch_size": 16},
        "augment": {"outline": 0.25, "posterize": 0.25, "random_convolution": 0.25, "greyscale": 0.1},
    },
    "patch-16-identity-text": {"vision": {"patch_size": 16}, "text_projection": "identity"},
}


def variant_changes(bundle_recipe: Recipe, changes: dict) -> dict:
    """The variant's recipe changes, its vision and augment fields merged into the bundle recipe's."""
    merged = {
        field: {**getattr(bundle_recipe, field), **changes[field]}
        for field in ("vision", "augment")
        if field in changes
    }
    return {**changes, **merged}


def variant_recipe(bundle_recipe: Recipe, changes: dict) -> Recipe:
    return bundle_recipe.updated(**variant_changes(bundle_recipe, changes))


def train_variant(bundle: Path, run_dir: Path, changes: dict, seconds: float) -> float:
    """One training run in its own process, on one thread, for ``seconds`` of CPU time; returns its wall time."""
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_file = run_dir / "changes.json"
    recipe_file.write_text(json.dumps({**changes, "max_seconds": seconds, "epochs": 100_000}, indent=2))
    command = [sys.executable, "-m", "model.training", "bundle", "--bundle", str(bundle), "--out", str(run_dir)]
    command += ["--recipe", str(recipe_file), "--threads", "1", "--budget-clock", "cpu", "--precision", "fp32"]
    command += ["--save-every", str(10 * seconds)]
    started = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def validation_metrics(run_dir: Path, bundle: Bundle) -> dict[str, float]:
    """The training loop's own validation of the run's final tensors, in percent."""
    recipe, tensors = load_trained(run_dir)
    towers = TrainedTowers(recipe)
    towers.load_state_dict(tensors)
    result = validate(towers.eval(), bundle, torch.device("cpu"))
    assert result is not None, "the bundle has no validation images"
    return {"val_top5": 100 * result.top5, "val_top1": 100 * result.top1, "val_loss": result.loss}


def paraphrase_metrics(run_dir: Path, data_dir: Path, recipe: Recipe) -> dict[str, float]:
    checkpoint = assemble(run_dir, run_dir / "checkpoint", templates=[recipe.val_template])
    clip, tokenizer = model.load_pretrained(checkpoint), model.load_tokenizer(checkpoint)
    paraphrase = emoji_report(clip, tokenizer, data_dir, style=VALIDATION_STYLE)["paraphrase"]
    return {"synonym_top1": paraphrase["synonym_top1"], "original_top1": paraphrase["original_top1"]}


def tower_cost(recipe: Recipe) -> dict[str, float]:
    config = VisionConfig(**recipe.vision)
    tower = ViT(config).eval()
    pixels = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tower(pixels)
    return {
        "parameters_m": sum(p.numel() for p in tower.parameters()) / 1e6,
        "mflops": counter.get_total_flops() / 1e6,
    }


def training_rate(recipe: Recipe, threads: int, batch_size: int = 128) -> float:
    """Training images/s at fp32 on ``threads`` threads: bench/train_step.py's measure."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        size, classes = recipe.vision["image_size"], 1700
        generator = torch.Generator().manual_seed(0)
        batch = {
            "pixels": torch.randn(batch_size, 3, size, size, generator=generator),
            "caption_features": torch.randn(batch_size, recipe.text_width, generator=generator),
            "concepts": torch.randint(0, classes, (batch_size,), generator=generator),
            "concept_targets": (torch.randn(classes, recipe.text_width, generator=generator), torch.arange(classes)),
        }
        return measure(recipe, batch, None, True, iterations=5)
    finally:
        torch.set_num_threads(previous)


def report(rows: dict[str, dict]) -> str:
    lines = [
        "| variant | val top-5 % | val top-1 % | val loss | train img/s | steps | params (M) | MFLOPs/img |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    paraphrases = all("synonym_top1" in row for row in rows.values())
    if paraphrases:
        lines[0] += " val synonyms top-1 % | val original names top-1 % |"
        lines[1] += " ---: | ---: |"
    for name, row in sorted(rows.items(), key=lambda item: -item[1]["val_top5"]):
        line = (
            f"| {name} | {row['val_top5']:.1f} | {row['val_top1']:.1f} | {row['val_loss']:.3f} | "
            f"{row['images_per_second']:.0f} | {row['steps']} | {row['parameters_m']:.2f} | {row['mflops']:.0f} |"
        )
        if paraphrases:
            line += f" {row['synonym_top1']:.1f} | {row['original_top1']:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=15.0, help="training CPU time per variant")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one per core)")
    parser.add_argument("--report-only", action="store_true", help="evaluate runs already in OUT")
    parser.add_argument("--paraphrases", type=Path, metavar="DATA_DIR", help="also the paraphrase set, val style")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    if not args.report_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            futures = {
                name: pool.submit(
                    train_variant,
                    args.bundle,
                    args.out / name,
                    variant_changes(bundle.recipe, VARIANTS[name]),
                    60 * args.minutes,
                )
                for name in args.variants
            }
            for name, future in futures.items():
                print(f"{name}: trained in {future.result() / 60:.1f} min", flush=True)
    rows = {}
    for name in args.variants:
        run_dir = args.out / name
        recipe = variant_recipe(bundle.recipe, VARIANTS[name])
        history = json.loads((run_dir / HISTORY_FILE).read_text())
        rows[name] = {
            **validation_metrics(run_dir, bundle),
            **tower_cost(recipe),
            "images_per_second": training_rate(recipe, threads=1),
            "steps": history[-1]["step"],
            "changes": VARIANTS[name],
        }
        if args.paraphrases:
            rows[name].update(paraphrase_metrics(run_dir, args.paraphrases, recipe))
        print(name, json.dumps(rows[name]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{torch.__version__}, one thread per run, {args.parallel} at once, {args.minutes:g} CPU minutes each\n")
    print(report(rows))


if __name__ == "__main__":
    main()
