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
    concept_colour_named  (C,) bool: the concept's label or captions depend on colour (never greyscaled)

The text tower is frozen, so its pooled outputs are all training needs of it; the trained
text projection is applied to them in the training step. model/training/pack.py writes bundles.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from .recipe import Recipe

MAX_BUNDLE_BYTES = 48 * 1024 * 1024  # what an offline GPU host is assumed to accept in one transfer


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
    concept_colour_named: torch.Tensor | None = None  # (C,) bool; None in bundles packed before it existed

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
        if array.dtype == np.bool_:
            return torch.from_numpy(array)
        if array.dtype == np.uint8 and array.ndim == 4:
            return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
        return torch.from_numpy(array).float() if array.dtype == np.float16 else torch.from_numpy(array).long()

    optional = {"concept_colour_named"}
    names = [
        name for name in Bundle.__dataclass_fields__ if name != "recipe" and (name in data or name not in optional)
    ]
    return Bundle(recipe, **{name: tensor(name) for name in names})


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
