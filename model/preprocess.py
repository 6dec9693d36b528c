"""Images to tensors: decode, orientation, colour mode, resize/crop, normalise.

``preprocess_images`` takes PIL images; ``load_image`` decodes bytes or a path with clear
errors, a pixel limit checked before decoding, and JPEG ``draft`` so a 24-megapixel photo is
decoded at the smallest scale that still covers the model's input size.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import CLIPConfig, VisionConfig
from .errors import ImageError, ImageTooLargeError
from .pixels import normalize_rgb

WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def load_image(
    source: bytes | str | os.PathLike | BinaryIO,
    max_pixels: int | None = None,
    target_size: int | None = None,
    before_decode: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """Decode one image fully. Raises ImageError (or ImageTooLargeError) with a clear message.

    ``max_pixels`` refuses images whose width x height exceeds it, before any pixel is decoded.
    ``target_size`` lets JPEGs decode at a reduced scale that still covers target_size x target_size.
    ``before_decode(width, height)`` is called with the size that will be decoded (a JPEG's reduced
    one), before any pixel is; what it raises goes to the caller (a budget of pixels, say).
    Animated formats (GIF, WebP, APNG) give their first frame.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "the upload"
    try:
        with Image.open(source) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{name} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            if target_size is not None and image.format == "JPEG":
                image.draft(image.mode, (target_size, target_size))
            if before_decode is not None:
                before_decode(*image.size)
            image.load()
            return image.copy() if getattr(image, "n_frames", 1) > 1 else image
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own refusal, before ours could measure it
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f"has {int(pixels.group(1))} pixels" if pixels else "is too large to decode safely"
        limit = f"over the limit of {max_pixels}" if max_pixels is not None else f"over Pillow's limit ({error})"
        raise ImageTooLargeError(f"{name} {size}, {limit}") from error
    except FileNotFoundError as error:
        raise ImageError(f"image file not found: {name}") from error
    except Image.UnidentifiedImageError as error:
        raise ImageError(
            f"{name} is not an image in a format this server can read (JPEG, PNG, WebP, GIF, BMP, TIFF, ...)"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageError(f"{name} could not be decoded (truncated or corrupt?): {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: EXIF orientation applied, transparency composited over white,
    16-bit greyscale scaled (not clipped) to 8 bits."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _scale_to_8_bit(image)
    elif image.mode == "F":
        image = _scale_to_8_bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer / float) greyscale -> 8-bit 'L', keeping the full range."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif image.mode == "I" and values.max(initial=0) <= 255:
        top = 255.0
    else:
        top = 65535.0
    scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


# Pillow's reducing_gap: an image more than 2x the output on a side is first shrunk by a whole factor
# with a box filter (Image.reduce: one cheap pass that builds only its smaller result), leaving under
# 4x the output per side for the bicubic filter. A 6000 x 6000 image resizes ~3.5x faster; against
# the full bicubic resize, a photo-like one differs by 1.3 of 255 levels on average (7 at most).
# Images under 2x the output per side are not affected.
REDUCING_GAP = 2.0


def resize(image: Image.Image, vision: VisionConfig) -> Image.Image:
    """Resize (bicubic) to the model's square input, per ``vision.resize_mode``.

    Reduced first (REDUCING_GAP), the bicubic passes see under 4x the output per side whatever the
    source's size or aspect ratio: squashing a 1 x 10,000,000 sliver costs about its output, not a
    bicubic pass over 10,000,000 rows (a 320 MB table of filter weights and seconds of CPU; a Pillow
    that resamples width first would also build a 64 x 10,000,000 intermediate, 2.5 GB in RGB)."""
    size = vision.image_size
    if vision.resize_mode == "squash":
        return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    # shortest side to `size`, then the centred square: the square is found in source coordinates and
    # only it is resampled, so a 1 x 100,000 image costs its 64 x 64 output, not a 64 x 6,400,000
    # intermediate (1.76 GB) that scaling the whole image first would build
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP)


def _vision(config: CLIPConfig | VisionConfig) -> VisionConfig:
    return config.vision if isinstance(config, CLIPConfig) else config


def preprocess_images(
    images: Sequence[Image.Image], config: CLIPConfig | VisionConfig, normalize: bool = True
) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) float tensor normalised with the config's mean/std,
    or uint8 when ``normalize=False`` (normalise later, e.g. on the GPU, with ``normalize_pixels``)."""
    vision = _vision(config)
    arrays = [np.asarray(resize(to_rgb(image), vision), dtype=np.uint8) for image in images]
    if not arrays:
        raise ImageError("no images to preprocess")
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    return normalize_pixels(pixels, vision) if normalize else pixels


def normalize_pixels(
    pixels: torch.Tensor, config: CLIPConfig | VisionConfig, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> normalised float of ``dtype``, on the tensor's own device."""
    return normalize_rgb(pixels.float() / 255.0, _vision(config)).to(dtype)


def open_images(paths: Sequence[str | Path], config: CLIPConfig | VisionConfig) -> torch.Tensor:
    """Convenience: decode files and preprocess them in one call."""
    size = _vision(config).image_size
    return preprocess_images([load_image(path, target_size=size) for path in paths], config)
