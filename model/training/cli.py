"""clip-train: train a CLIP's image side against a frozen text tower (LiT with the text side locked).

    clip-train [train] DATA_DIR OUT [--recipe JSON] [--epochs N] ...   # pack + train + assemble here
    clip-train pack DATA_DIR BUNDLE [--recipe JSON]                     # self-contained bundle (model/training/bundle.py)
    python -m model.training --bundle BUNDLE --out RUN_DIR              # torch + numpy only; torchrun works
    clip-train assemble RUN_DIR CHECKPOINT [--data DATA_DIR]            # + the MiniLM text tower -> checkpoint

Trained: the ViT, both projections and the temperature (logit_scale, clamped at ln 100), with a
symmetric InfoNCE loss in which images of the same concept in a batch count as positives of each
other, plus (recipe.concept_loss_weight) each image against the class prompt of every seen concept.
AdamW, linear warmup then cosine decay, bf16 autocast on CUDA and on CPUs with bf16 units. RUN_DIR gets, after every
epoch: the trained tensors (trained-*.pt shards of at most 16 MiB, trained.json naming them),
history.json, and resume.pt (optimizer state, for --resume). Under torchrun each process takes
its share of every batch; DistributedDataParallel averages the gradients.

The package, by job: recipe.py, bundle.py (the format) and pack.py (writing it); towers.py, loss.py,
step.py and optim.py (model, loss, one step, optimizer and schedule); loop.py (train_bundle, read
top to bottom); validate.py, outputs.py and progress.py (what a run reports and leaves); augment.py;
assemble.py and plot.py (the checkpoint and its training curves); cli.py (this command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ..errors import ModelError
from .loop import train_bundle
from .recipe import Recipe


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
    bundle.add_argument(
        "--budget-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the recipe's max_seconds counts: wall time, or this process's CPU time "
        "(equal compute for runs on a machine other jobs share; use with --threads 1)",
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
            from .pack import pack

            pack(args.data_dir, args.bundle, _recipe(args), args.base)
        elif args.command == "bundle":
            train_bundle(
                args.bundle,
                args.out,
                _recipe_changes(args),
                args.resume,
                args.precision,
                args.save_every,
                args.budget_clock,
            )
        elif args.command == "assemble":
            from .assemble import assemble

            print(f"wrote {assemble(args.run_dir, args.out, args.data, args.base, args.templates)}")
        else:
            from .assemble import assemble
            from .pack import pack

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
