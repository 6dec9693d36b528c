"""Decoding and preprocessing on real Pillow images, checked by pixel values."""

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import model
from model.config import CLIP_MEAN, CLIP_STD, VisionConfig

CROP = VisionConfig(image_size=32, patch_size=8)
SQUASH = VisionConfig(image_size=32, patch_size=8, resize_mode="squash")
REPO = Path(__file__).resolve().parents[2]


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def pixel(image: Image.Image, xy=(0, 0)):
    return model.to_rgb(image).getpixel(xy)


def test_rgba_transparency_is_composited_over_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((1, 1), (255, 0, 0, 255))
    image.putpixel((2, 2), (0, 0, 255, 128))
    assert pixel(image) == (255, 255, 255)
    assert pixel(image, (1, 1)) == (255, 0, 0)
    assert pixel(image, (2, 2)) == (127, 127, 255)


def test_palette_with_transparency_and_la():
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    assert pixel(palette) == (255, 255, 255) and pixel(palette, (1, 1)) == (10, 200, 30)
    decoded = model.load_image(encoded(palette, "PNG"))
    assert decoded.mode == "P" and pixel(decoded) == (255, 255, 255)
    grey_alpha = Image.new("LA", (2, 2), (40, 255))
    grey_alpha.putpixel((0, 0), (40, 0))
    assert pixel(grey_alpha) == (255, 255, 255) and pixel(grey_alpha, (1, 1)) == (40, 40, 40)


def test_cmyk_and_bilevel():
    assert pixel(Image.new("CMYK", (2, 2), (0, 0, 0, 0))) == (255, 255, 255)
    assert pixel(Image.new("CMYK", (2, 2), (255, 0, 0, 0))) == (0, 255, 255)
    assert pixel(Image.new("1", (2, 2), 1)) == (255, 255, 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100], [32768, 65535]], dtype=np.uint16)
    image = model.load_image(encoded(Image.fromarray(values), "PNG"))
    assert image.mode in ("I;16", "I")
    rgb = model.to_rgb(image)
    assert [rgb.getpixel(xy)[0] for xy in [(0, 0), (1, 0), (0, 1), (1, 1)]] == [0, 100, 128, 255]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright = model.to_rgb(model.load_image(encoded(image, "JPEG", exif=exif.tobytes(), quality=95)))
    assert upright.size == (20, 40)
    top = upright.getpixel((10, 5))
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 255, 0)]]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert pixel(model.load_image(data))[0] > 200


def test_crop_and_squash_resize_against_pillow():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    crop = model.preprocess_images([image], CROP, normalize=False)[0].permute(1, 2, 0).numpy()
    expected = np.asarray(image.resize((64, 32), Image.Resampling.BICUBIC).crop((16, 0, 48, 32)))
    assert np.array_equal(crop, expected)
    squash = model.preprocess_images([image], SQUASH, normalize=False)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(squash, np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC)))


def test_normalisation_with_config_mean_std_and_uint8_path():
    image = Image.new("RGB", (32, 32), (255, 128, 0))
    as_uint8 = model.preprocess_images([image, image], CROP, normalize=False)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (2, 3, 32, 32)
    normalised = model.preprocess_images([image, image], CROP)
    expected = [(value / 255 - mean) / std for value, mean, std in zip((255, 128, 0), CLIP_MEAN, CLIP_STD)]
    assert torch.allclose(normalised[0, :, 0, 0], torch.tensor(expected), atol=1e-6)
    assert torch.equal(model.normalize_pixels(as_uint8, CROP), normalised)
    assert model.normalize_pixels(as_uint8, CROP, torch.bfloat16).dtype == torch.bfloat16


def test_large_jpeg_decodes_through_draft():
    data = encoded(Image.new("RGB", (2048, 1536), (0, 128, 255)), "JPEG")
    assert model.load_image(data).size == (2048, 1536)
    sizes = []
    reduced = model.load_image(data, target_size=224, before_decode=lambda *size: sizes.append(size))
    assert reduced.size == (512, 384)  # the largest JPEG scale (1/4) that still covers 224 x 224
    assert sizes == [(512, 384)]  # the size told before decoding is the one decoded


def test_before_decode_can_refuse_an_image_before_its_pixels_are_decoded():
    class Refused(Exception):
        pass

    def refuse(width, height):
        raise Refused(f"{width}x{height}")

    with pytest.raises(Refused, match="300x200"):
        model.load_image(encoded(Image.new("L", (300, 200)), "PNG"), before_decode=refuse)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"definitely not an image", "not an image"),
        (encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60], "could not be decoded|not an image"),
        (encoded(Image.new("RGB", (256, 256)), "JPEG")[:300], "could not be decoded"),
    ],
)
def test_corrupt_or_truncated_files_raise_image_error(data, message):
    with pytest.raises(model.ImageError, match=message):
        model.load_image(data)


def test_pixel_limit_is_checked_before_decoding():
    data = encoded(Image.new("L", (300, 200)), "PNG")
    with pytest.raises(model.ImageTooLargeError, match="300x200 = 60000 pixels, over the limit of 50000"):
        model.load_image(data, max_pixels=50_000)
    assert model.load_image(data, max_pixels=60_000).size == (300, 200)


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header claims width x height (CRC fixed): Pillow reads the size, nothing more."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = 8 + 4  # signature, then the IHDR chunk's length
    data[header + 4 : header + 12] = struct.pack(">II", width, height)
    data[header + 17 : header + 21] = struct.pack(">I", zlib.crc32(bytes(data[header : header + 17])))
    return bytes(data)


def test_a_decompression_bomb_is_refused_with_the_configured_limit_not_pillows():
    with pytest.raises(model.ImageTooLargeError) as refused:
        model.load_image(png_claiming(20_000, 10_000), max_pixels=40_000_000)  # over Pillow's 178,956,970 too
    assert str(refused.value) == "the upload has 200000000 pixels, over the limit of 40000000"


@pytest.mark.parametrize(
    "width, height, square",
    [
        (40, 30, (5, 0, 35, 30)),  # 32 / 30: no whole-pixel intermediate size
        (41, 30, (5.5, 0, 35.5, 30)),  # a half-pixel offset
        (30, 41, (0, 5.5, 30, 35.5)),
        (101, 75, (13, 0, 88, 75)),
        (100, 133, (0, 16.5, 100, 116.5)),
    ],
)
def test_crop_resamples_the_centred_square_of_the_source(width, height, square):
    """At 32 px, against Pillow resampling the square found by hand. Every square is under 4x the
    output per side, so Pillow's plain bicubic resize, no reduction first (that is the next test)."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    crop = model.preprocess_images([image], CROP, normalize=False)[0].permute(1, 2, 0).numpy()
    expected = image.resize((32, 32), Image.Resampling.BICUBIC, box=square)
    assert np.array_equal(crop, np.asarray(expected))


@pytest.mark.parametrize(
    "config, processor_options",
    [
        (CROP, {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
        (SQUASH, {"size": {"height": 32, "width": 32}, "do_center_crop": False}),
    ],
    ids=["crop", "squash"],
)
def test_normalised_pixels_match_transformers_clip_image_processor(config, processor_options):
    """transformers' Pillow CLIP processor, given OpenAI CLIP's mean and std as literals, on an 80 x 40
    image (crop: an exact 0.8 scale, where resizing the whole image then cropping and resampling
    only the centred square agree)."""
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessorPil(
        **processor_options,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))
    expected = processor(images=[image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(model.preprocess_images([image], config), expected, rtol=0, atol=1e-6)


def smooth_image(width: int, height: int) -> Image.Image:
    """Photo-like: random colours at a coarse scale, smoothly interpolated."""
    rng = np.random.default_rng(2)
    coarse = Image.fromarray(rng.integers(0, 255, (max(height // 40, 2), max(width // 40, 2), 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("vision", [CROP, SQUASH], ids=["crop", "squash"])
def test_a_big_image_is_reduced_first_and_stays_close_to_the_full_bicubic_resize(vision):
    """1200 x 900 at 32 px: Pillow's own resize with reducing_gap 2 (a box reduction by 14, then
    bicubic), within a few levels of the full bicubic resize."""
    image = smooth_image(1200, 900)
    box = (150, 0, 1050, 900) if vision.resize_mode == "crop" else None
    ours = model.preprocess_images([image], vision, normalize=False)[0].permute(1, 2, 0).numpy().astype(int)
    reduced = image.resize((32, 32), Image.Resampling.BICUBIC, box=box, reducing_gap=2.0)
    assert np.array_equal(ours, np.asarray(reduced))
    full = np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC, box=box)).astype(int)
    assert np.abs(ours - full).mean() < 2 and np.abs(ours - full).max() <= 12


@pytest.mark.parametrize(
    "mode, width, height",
    [("crop", 1, 1_000_000), ("crop", 1_000_000, 1), ("squash", 1, 10_000_000), ("squash", 10_000_000, 1)],
)
def test_a_sliver_image_resizes_without_a_giant_intermediate(mode, width, height):
    """Cropping: scaling the whole 1 x 1,000,000 image first would build 64 x 64,000,000 pixels (4 GB).
    Squashing 1 x 10,000,000 without the reduction first: Pillow 13's bicubic pass over 10,000,000 rows
    holds a 320 MB table of filter weights (a Pillow that resamples width first would also build a
    64 x 10,000,000 intermediate, 2.5 GB). Under a 256 MiB address-space allowance beyond what the
    process holds, none of these fits."""
    script = f"""
import resource
from PIL import Image
from model.config import VisionConfig
from model.preprocess import resize
image = Image.new("RGB", ({width}, {height}), (90, 20, 200))
with open("/proc/self/statm") as statm:
    held = int(statm.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (held + 256 * 2**20, resource.RLIM_INFINITY))
out = resize(image, VisionConfig(image_size=64, patch_size=8, resize_mode="{mode}"))
colour = out.getpixel((10, 10))  # the flat colour, give or take the filters' rounding
assert out.size == (64, 64) and max(abs(a - b) for a, b in zip(colour, (90, 20, 200))) <= 1, (out.size, colour)
"""
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
