"""Training-step throughput: fp32 with the default attention kernel (how clip-train ran before)
against what clip-train now chooses (--precision auto, plain-math attention on CPU), one run.

    python bench/train_step.py                    # the shipped recipe's image tower, batch 128
    python bench/train_step.py --patch 8          # the same tower at patch 8

Both configurations run model.training.step.training_step, the function the training loop calls, on
the same random batch, interleaved so machine drift hits both alike. Prints images/s for each
and the ratio; absolute numbers on shared machines are noise, the ratio is the figure to report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.training.optim import make_optimizer  # noqa: E402
from model.training.recipe import Recipe  # noqa: E402
from model.training.step import training_precision, training_step  # noqa: E402
from model.training.towers import TrainedTowers  # noqa: E402

SHIPPED_RECIPE = ROOT / "model" / "weights" / "emoji-clip" / "recipe.json"


def measure(recipe: Recipe, batch: dict, autocast_dtype, math_attention: bool, iterations: int) -> float:
    """Median images/s over ``iterations`` timed steps, after two warm-up steps, from the same start."""
    torch.manual_seed(0)
    towers = TrainedTowers(recipe).train()
    optimizer = make_optimizer(towers, recipe)
    timings = []
    for step in range(iterations + 2):
        start = time.perf_counter()
        training_step(
            towers,
            optimizer,
            **batch,
            concept_weight=recipe.concept_loss_weight,
            autocast_dtype=autocast_dtype,
            math_attention=math_attention,
        )
        if step >= 2:
            timings.append(time.perf_counter() - start)
    return len(batch["pixels"]) / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=SHIPPED_RECIPE)
    parser.add_argument("--patch", type=int, help="change the recipe's patch size")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    recipe = Recipe.from_dict(json.loads(args.recipe.read_text()))
    if args.patch:
        recipe = recipe.updated(vision={**recipe.vision, "patch_size": args.patch})
    size, classes = recipe.vision["image_size"], 1700
    generator = torch.Generator().manual_seed(0)
    concepts = torch.randint(0, classes, (args.batch,), generator=generator)
    batch = {
        "pixels": torch.randn(args.batch, 3, size, size, generator=generator),
        "caption_features": torch.randn(args.batch, recipe.text_width, generator=generator),
        "concepts": concepts,
        "concept_targets": (torch.randn(classes, recipe.text_width, generator=generator), torch.arange(classes))
        if recipe.concept_loss_weight
        else None,
    }
    chosen = training_precision(torch.device("cpu"))
    configurations = {
        "fp32, default attention": (None, False),
        f"{str(chosen or torch.float32).removeprefix('torch.')}, math attention": (chosen, True),
    }
    rates = {name: [] for name in configurations}
    for _ in range(2):  # interleaved
        for name, (dtype, math_attention) in configurations.items():
            rates[name].append(measure(recipe, batch, dtype, math_attention, args.iterations))
    vision = recipe.vision
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; image tower {size}px/{vision['patch_size']}, "
        f"width {vision['width']}, {vision['num_layers']} layers; batch {args.batch}, concept loss weight {recipe.concept_loss_weight}"
    )
    means = {name: statistics.mean(values) for name, values in rates.items()}
    for name, rate in means.items():
        print(f"  {name:28s} {rate:8.1f} img/s")
    baseline, ours = means.values()
    print(f"  ratio {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
