"""clip-train pack: DATA_DIR (an index.jsonl and its images) -> a training bundle (model/training/bundle.py).

Needs the full install: Pillow to render the images, tokenizers and the frozen text tower to
encode every caption once.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..data.index import concept_key, concept_labels, read_index
from ..errors import ModelError
from .augment import depends_on_colour
from .bundle import MAX_BUNDLE_BYTES, write_bundle
from .recipe import Recipe

VAL_SPLITS = ("val", "val_unseen")


def pack(data_dir: str | Path, bundle_path: str | Path, recipe: Recipe, base: str | Path | None = None) -> Path:
    """Read DATA_DIR/index.jsonl, render the training and validation images at the model's input
    size, encode every caption once with the frozen text tower, write the bundle."""
    from ..convert.minilm import DEFAULT_VISION

    data_dir = Path(data_dir)
    index = data_dir / "index.jsonl"
    if not index.is_file():
        raise ModelError(
            f"{index} not found: DATA_DIR needs an index.jsonl (python -m model.data.emoji build DATA_DIR)"
        )
    records = read_index(index)
    recipe = recipe.updated(vision={**DEFAULT_VISION.__dict__, **recipe.vision})
    train = [r for r in records if r.get("split", "train") == "train" and (recipe.skin_tones or _is_base_image(r))]
    train = train[: recipe.limit_images] if recipe.limit_images else train
    val = [r for r in records if r.get("split") in VAL_SPLITS and _is_base_image(r)]
    if not train:
        raise ModelError(f"{index} has no training records (split 'train', or no split at all)")
    concepts = concept_labels(records)
    concept_row = {key: row for row, key in enumerate(concepts)}

    with tempfile.TemporaryDirectory() as scratch:
        clip, tokenizer = base_model(recipe, base, scratch)
        recipe = recipe.updated(text_width=clip.config.text.width)
        captions = sorted({caption for record in train for caption in record["captions"]})
        caption_row = {caption: row for row, caption in enumerate(captions)}
        print(
            f"encoding {len(captions)} captions and {len(concepts)} class prompts with the frozen text tower",
            file=sys.stderr,
        )
        caption_features = pooled_text_features(clip, tokenizer, captions)
        class_features = pooled_text_features(
            clip, tokenizer, [recipe.val_template.replace("{}", name) for name in concepts.values()]
        )

    size = recipe.vision["image_size"]
    lengths = [len(record["captions"]) for record in train]
    arrays = {
        "train_images": load_rgba(data_dir, train, size, recipe.vision.get("resize_mode", "crop")),
        "train_concepts": np.array([concept_row[concept_key(r)] for r in train], dtype=np.int32),
        "caption_offsets": np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        "caption_index": np.array([caption_row[c] for r in train for c in r["captions"]], dtype=np.int32),
        "caption_features": caption_features,
        "val_images": load_rgba(data_dir, val, size, recipe.vision.get("resize_mode", "crop")),
        "val_concepts": np.array([concept_row[concept_key(r)] for r in val], dtype=np.int32),
        "class_features": class_features,
        "concept_colour_named": colour_named_concepts(concepts, train),
    }
    path = write_bundle(bundle_path, recipe, arrays)
    megabytes = path.stat().st_size / 2**20
    print(
        f"wrote {path}: {len(train)} training images, {len(captions)} captions, {len(val)} validation images, "
        f"{megabytes:.1f} MiB",
        file=sys.stderr,
    )
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        print(f"warning: {path} is over {MAX_BUNDLE_BYTES // 2**20} MiB", file=sys.stderr)
    return path


def _is_base_image(record: dict) -> bool:
    """Not a skin-tone variant (records without a variant field count as base images)."""
    return record.get("variant", record.get("concept")) == record.get("concept")


def base_model(recipe: Recipe, base: str | Path | None, scratch: str | Path):
    """The frozen text tower's checkpoint: ``base`` if given, else all-MiniLM-L6-v2 with a fresh
    image tower of the recipe's shape (written to ``scratch``)."""
    from .. import checkpoint
    from ..config import VisionConfig
    from ..convert.minilm import convert

    if base is None:
        base = convert(Path(scratch) / "base", vision=VisionConfig(**recipe.vision), embed_dim=recipe.embed_dim)
    return checkpoint.load_pretrained(base), checkpoint.load_tokenizer(base)


@torch.inference_mode()
def pooled_text_features(clip, tokenizer, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """(len(texts), text_width) float16: the text tower's pooled output, before the projection.

    Texts go through shortest first, so each batch pads to about its own length instead of to the
    longest caption in a random mix; rows come back in the order given. Masked pooling makes a
    text's features independent of its batch, so the order changes no result."""
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    features = torch.zeros(len(texts), clip.config.text.width, dtype=torch.float16)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = tokenizer([texts[row] for row in rows])
        features[rows] = clip.text_encoder(ids, mask).to(torch.float16)
    return features.numpy()


def load_rgba(data_dir: Path, records: list[dict], size: int, resize_mode: str) -> np.ndarray:
    """(N, size, size, 4) uint8; fully transparent pixels zeroed (they compress to nothing)."""
    from ..config import VisionConfig
    from ..preprocess import load_image, resize

    vision = VisionConfig(image_size=size, resize_mode=resize_mode)
    images = np.zeros((len(records), size, size, 4), dtype=np.uint8)
    for row, record in enumerate(records):
        image = resize(load_image(data_dir / record["image"]).convert("RGBA"), vision)
        images[row] = np.asarray(image)
    images[images[..., 3] == 0] = 0
    return images


def colour_named_concepts(concepts: dict[str, str], records: list[dict]) -> np.ndarray:
    """(C,) bool, in ``concepts`` order: whether greyscale would make the concept's class name or
    the captions of its training images (``records``) false (augment.depends_on_colour)."""
    texts: dict[str, list[str]] = {key: [label] for key, label in concepts.items()}
    subgroups: dict[str, str] = {}
    for record in records:
        texts[concept_key(record)].extend(record["captions"])
        subgroups.setdefault(concept_key(record), record.get("subgroup", ""))
    return np.array([depends_on_colour(texts[key], subgroups.get(key)) for key in concepts], dtype=bool)
