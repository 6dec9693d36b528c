"""Real images for the bulk tests (tests/app/test_bulk.py, test_bulk_ray.py): Twemoji PNGs from the
pinned npm package, generated 640x480 JPEGs, a broken file, a .tar of some of them, a symlink loop."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data.emoji_sources import TWITTER, EmojiDataError, default_cache_dir, extract

from ..ci_skips import running_in_ci

# cat, dog, pizza, rocket, tree, house
TWEMOJI = ("1f431", "1f436", "1f355", "1f680", "1f333", "1f3e0")
LABELS = ["cat", "dog", "pizza", "rocket", "tree", "house"]


def twemoji_dir() -> Path:
    """The pinned Twemoji 64 px PNGs (fetched with npm if need be); skips without them, except under CI=true."""
    cache = default_cache_dir()
    try:
        root = extract(TWITTER, cache)
    except (EmojiDataError, OSError) as error:  # npm missing, offline: the package cannot be had
        if running_in_ci():
            pytest.fail(f"CI=true and the pinned Twemoji package is not available: {error}", pytrace=False)
        pytest.skip(f"the pinned Twemoji package is not available ({error}): python -m model.data.emoji fetch")
    return root / "img" / "twitter" / "64"


def photo_jpeg(seed: int, size=(640, 480)) -> bytes:
    """A 640x480 JPEG with structure (gradients and noise), different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    channels = [(x * (c + 1) + y * (seed + 2)) % 256 for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.integers(0, 40, (size[1], size[0], 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def make_collection(root: Path) -> Path:
    """root/emoji/<hex>.png (6 Twemoji), root/photos/<n>.jpg (3 JPEGs, one in a subfolder),
    root/photos/broken.jpg (a JPEG cut short), root/photos/notes.txt (skipped: not an image suffix),
    and root/photos/deeper/loop -> .. (a symlink loop)."""
    emoji = root / "emoji"
    emoji.mkdir(parents=True)
    for code in TWEMOJI:
        shutil.copy(twemoji_dir() / f"{code}.png", emoji / f"{code}.png")
    photos = root / "photos"
    (photos / "deeper").mkdir(parents=True)
    (photos / "0.jpg").write_bytes(photo_jpeg(0))
    (photos / "1.jpg").write_bytes(photo_jpeg(1))
    (photos / "deeper" / "2.jpg").write_bytes(photo_jpeg(2))
    (photos / "broken.jpg").write_bytes(photo_jpeg(3)[:600])
    (photos / "notes.txt").write_text("not an image, and not named like one")
    (photos / "deeper" / "loop").symlink_to("..")
    return root


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path
