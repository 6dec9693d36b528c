"""python -m model.convert {seed,minilm,flava} ...: write this library's checkpoint directory."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import VisionConfig
from ..errors import ModelError


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__)
    sources = parser.add_subparsers(dest="source", required=True)

    seed = sources.add_parser("seed", help="a state_dict saved from the seed's CLIP(...)")
    seed.add_argument("seed_path", help="the .pt file (torch.save(seed_clip.state_dict()))")
    seed.add_argument("out_dir")
    seed.add_argument(
        "--seed-kwargs", type=_json_object, default={}, help="JSON: the keyword arguments given to the seed's CLIP(...)"
    )
    seed.add_argument("--vocab", required=True, help="WordPiece vocab.txt with text vocab_size tokens")

    minilm = sources.add_parser("minilm", help="all-MiniLM-L6-v2 text tower + a fresh vision tower")
    minilm.add_argument("out_dir")
    minilm.add_argument("--vision-config", type=_json_object, default=None, help="JSON: VisionConfig fields")
    minilm.add_argument("--embed-dim", type=int, default=384, help="shared embedding size (projections)")
    minilm.add_argument("--source-dir", default=None, help="a local copy of the model (default: the installed package)")

    flava = sources.add_parser("flava", help="FLAVA's image and text towers (a local copy of facebook/flava-full)")
    flava.add_argument("source_dir", help="folder with config.json, model.safetensors or pytorch_model.bin, vocab.txt")
    flava.add_argument("out_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.source == "seed":
            from .seed import convert as convert_seed

            out = convert_seed(args.seed_path, args.out_dir, args.seed_kwargs, args.vocab)
        elif args.source == "flava":
            from .flava import convert as convert_flava

            out = convert_flava(args.source_dir, args.out_dir)
        else:
            from .minilm import DEFAULT_VISION
            from .minilm import convert as convert_minilm

            vision = VisionConfig(**{**DEFAULT_VISION.__dict__, **args.vision_config}) if args.vision_config else None
            out = convert_minilm(args.out_dir, vision=vision, embed_dim=args.embed_dim, source_dir=args.source_dir)
    except (ModelError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
