"""The training bundle: one self-contained file a training host needs, readable with numpy alone.

A zip of .npy arrays (numpy's .npz layout, LZMA-compressed members):

    recipe            the Recipe as UTF-8 JSON bytes
    train_images      (N, S, S, 4) uint8 RGBA at the model's input side S
    train_concepts    (N,) int32 concept index of each image (images of one concept are all positives)
    caption_offsets   (N + 1,) int64: image i's captions are caption_index[offsets[i]:offsets[i + 1]]
    caption_index     int32 rows of caption_features
    caption_features  (K, text_width) float16 pooled text-tower outputs of the unique captions
    val_images        (M, S, S, 4) uint8, the validation style (may be empty)
    val_concepts      (M,) int32 indices into class_features
    class_features    (C, text_width) float16 pooled outputs of recipe.val_template for every concept

The text tower is frozen, so its pooled outputs are all training needs of it; the trained
text projection is applied to them in the training step.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from .recipe import Recipe

MAX_BUNDLE_BYTES = 48 * 1024 * 1024  # what an offline GPU host is assumed to accept in one transfer
VAL_SPLITS = ("val", "val_unseen")


@dataclass
class Bundle:
    recipe: Recipe
    train_images: torch.Tensor  # (N, 4, S, S) uint8
    train_concepts: torch.Tensor  # (N,) long
    caption_offsets: torch.Tensor  # (N + 1,) long
    caption_index: torch.Tensor  # long
    caption_features: torch.Tensor  # (K, T) float32
    val_images: torch.Tensor  # (M, 4, S, S) uint8
    val_concepts: torch.Tensor  # (M,) long
    class_features: torch.Tensor  # (C, T) float32

    def caption_draws(self, sampling: str = "uniform") -> torch.Tensor:
        """Cumulative draw weights over caption_index, each image's own summing to 1, so image i's
        captions cover [i, i + 1) (see sample_captions). "uniform": every caption of an image alike;
        "specific": a caption weighs 1 / the number of concepts whose images carry it."""
        lengths = self.caption_offsets[1:] - self.caption_offsets[:-1]
        image_of_entry = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        if sampling == "specific":
            pairs = torch.unique(torch.stack((self.caption_index, self.train_concepts[image_of_entry])), dim=1)
            concepts_per_caption = torch.bincount(pairs[0], minlength=len(self.caption_features))
            weights = 1.0 / concepts_per_caption[self.caption_index].double()
        else:
            weights = torch.ones(len(self.caption_index), dtype=torch.float64)
        per_image = torch.zeros(len(lengths), dtype=torch.float64).index_add_(0, image_of_entry, weights)
        return torch.cumsum(weights / per_image[image_of_entry], dim=0)

    def sample_captions(self, images: torch.Tensor, generator: torch.Generator, draws: torch.Tensor) -> torch.Tensor:
        """One caption row (into caption_features) per image index, drawn by ``draws`` (caption_draws(),
        computed once per run)."""
        target = images.double() + torch.rand(len(images), generator=generator, dtype=torch.float64)
        entries = torch.searchsorted(draws, target, right=True)
        entries = torch.minimum(
            torch.maximum(entries, self.caption_offsets[images]), self.caption_offsets[images + 1] - 1
        )
        return self.caption_index[entries]


def load_bundle(path: str | Path) -> Bundle:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ModelError(f"cannot read training bundle {path}: {error}") from error
    recipe = Recipe.from_dict(json.loads(bytes(data.pop("recipe")).decode()))

    def tensor(name: str) -> torch.Tensor:
        array = data[name]
        if array.dtype == np.uint8 and array.ndim == 4:
            return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
        return torch.from_numpy(array).float() if array.dtype == np.float16 else torch.from_numpy(array).long()

    return Bundle(recipe, **{name: tensor(name) for name in Bundle.__dataclass_fields__ if name != "recipe"})


def write_bundle(path: str | Path, recipe: Recipe, arrays: dict[str, np.ndarray]) -> Path:
    """Write atomically; LZMA packs the drawings' flat colours about twice as tight as deflate."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    arrays = {"recipe": np.frombuffer(recipe.to_json().encode(), dtype=np.uint8), **arrays}
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    partial.replace(path)
    return path


# ----------------------------------------------------------------------------- pack (full install)


def pack(data_dir: str | Path, bundle_path: str | Path, recipe: Recipe, base: str | Path | None = None) -> Path:
    """Read DATA_DIR/index.jsonl, render the training and validation images at the model's input
    size, encode every caption once with the frozen text tower, write the bundle."""
    from ..convert.minilm import DEFAULT_VISION
    from ..data.index import read_index

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


def concept_key(record: dict) -> str:
    """The emoji builder's concept; for other datasets each image is its own concept."""
    return record.get("concept") or record["image"]


def concept_labels(records: list[dict]) -> dict[str, str]:
    """concept key -> class name (the record's label, else its first caption), in index order."""
    labels: dict[str, str] = {}
    for record in records:
        labels.setdefault(concept_key(record), record.get("label") or record["captions"][0])
    return labels


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
    """(len(texts), text_width) float16: the text tower's pooled output, before the projection."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[start : start + batch_size])
        chunks.append(clip.text_encoder(ids, mask).to(torch.float16))
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, clip.config.text.width), np.float16)


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
