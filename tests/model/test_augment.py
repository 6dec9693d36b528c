"""The style-randomising augmentations (outline, posterise, RandConv, greyscale) and the label-colour
rule: each changes what it should and keeps shapes, range and, for colour-named concepts, colours;
off (the default) they leave the augmentations exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.data.emoji_catalog import held_out_pattern, load_concepts, load_paraphrases, variant_captions
from model.data.emoji_sources import EMOJIBASE, extract
from model.errors import ConfigError
from model.training.augment import (
    AugmentConfig,
    augment,
    depends_on_colour,
    greyscale,
    outline,
    posterize,
    random_convolution,
)

# no affine, blur, noise or JPEG, white backgrounds: the output is the drawing over white
QUIET = dict(blur=0.0, noise=0.0, jpeg=0.0, white_background=1.0, scale=(1.0, 1.0), translate=0.0, rotate_degrees=0.0)
STYLE_ON = dict(outline=1.0, posterize=1.0, random_convolution=1.0, random_convolution_strength=0.4, greyscale=1.0)


def over_white(rgba: torch.Tensor) -> torch.Tensor:
    x = rgba.double() / 255.0
    return (x[:, :3] * x[:, 3:] + (1 - x[:, 3:])).float()


def random_rgba(count: int, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (count, 4, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def square(side: int = 16, inner: int = 6, color=(255, 0, 0)) -> torch.Tensor:
    """(1, 4, side, side) uint8: an opaque ``inner`` x ``inner`` square, centred, on transparent (zeroed) pixels."""
    rgba = torch.zeros((1, 4, side, side), dtype=torch.uint8)
    start = (side - inner) // 2
    rgba[0, :, start : start + inner, start : start + inner] = torch.tensor([*color, 255]).view(4, 1, 1)
    return rgba


def test_default_config_gives_the_augmentations_of_before():
    """Figures from model/augment.py before the style transforms existed (commit e01d947): a recipe
    without them trains on the same images, and the generator is left where it was (an exact draw)."""
    generator = torch.Generator().manual_seed(1)
    out = augment(random_rgba(8), AugmentConfig(), generator)
    before_means = [0.742712, 0.808832, 0.514439, 0.48576, 0.473912, 0.519297, 0.808047, 0.766204]
    before_stds = [0.156734, 0.16995, 0.140305, 0.145392, 0.168925, 0.107444, 0.163798, 0.153087]
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.tensor(before_means), rtol=0, atol=2e-6)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), torch.tensor(before_stds), rtol=0, atol=2e-6)
    assert torch.rand(1, generator=generator).item() == 0.8569434285163879


def test_all_style_transforms_keep_shape_dtype_and_range():
    rgba = random_rgba(8)
    keep_colour = torch.tensor([True, False] * 4)
    out = augment(rgba, AugmentConfig(**STYLE_ON), torch.Generator().manual_seed(0), keep_colour)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_posterize_keeps_the_top_bits_spread_over_the_full_range():
    rgba = random_rgba(2, side=16)
    x = rgba.float() / 255
    out = posterize(x, torch.tensor([3, 5]))
    values = rgba.numpy().astype(np.int64)
    for image, bits in enumerate((3, 5)):
        expected = (values[image, :3] >> (8 - bits)) * 255 / (2**bits - 1) / 255  # hand: v's top bits, rescaled
        np.testing.assert_allclose(out[image, :3].numpy(), expected, rtol=0, atol=1e-6)
        assert len(torch.unique(out[image, :3])) == 2**bits
    assert torch.equal(out[:, 3], x[:, 3])  # alpha kept
    ends = posterize(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2), torch.tensor([2]))
    assert ends.flatten().tolist() == [0.0, 1.0] * 3  # black and white stay black and white


def test_augment_posterizes_opaque_drawings_to_few_levels():
    rgba = random_rgba(4)
    rgba[:, 3] = 255
    plain = augment(rgba, AugmentConfig(**QUIET), torch.Generator().manual_seed(0))
    flat = augment(rgba, AugmentConfig(**QUIET, posterize=1.0, posterize_bits=(2, 3)), torch.Generator().manual_seed(0))
    for image in range(4):
        assert len(torch.unique(plain[image])) > 200
        assert len(torch.unique(flat[image])) <= 8


@pytest.mark.parametrize("grow, covered", [(True, 8 * 8), (False, 4 * 4)])
def test_outline_grows_or_shrinks_the_alpha_by_one_pixel_in_the_drawings_colour(grow, covered):
    x = square().float() / 255  # a 6 x 6 red square
    out = outline(x, torch.tensor([grow]))
    assert int((out[0, 3] > 0).sum()) == covered
    assert out.shape == x.shape and out[0, 3].max() == 1
    covered_pixels = out[0, :3][:, out[0, 3] > 0]
    torch.testing.assert_close(covered_pixels, torch.tensor([1.0, 0.0, 0.0]).view(3, 1).expand_as(covered_pixels))


def test_outline_at_the_frame_edge_treats_outside_as_transparent():
    x = torch.ones((1, 4, 8, 8))
    assert int(outline(x, torch.tensor([False]))[0, 3].sum()) == 6 * 6


def test_augment_outlines_each_image_one_way_or_the_other():
    rgba = square().expand(8, 4, 16, 16)
    out = augment(rgba, AugmentConfig(**QUIET, outline=1.0), torch.Generator().manual_seed(0))
    drawn = [(image < 0.5).any(dim=0) for image in out]  # (the identity resampling leaks ~1e-6 of alpha)
    covered = sorted({int(mask.sum()) for mask in drawn})
    assert covered == [4 * 4, 8 * 8]  # both ways occur in the batch, nothing in between
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
    for image, mask in zip(out, drawn):
        torch.testing.assert_close(image[:, mask], red.expand(3, int(mask.sum())))  # no fringe from transparent pixels


def test_random_convolution_at_strength_zero_is_the_identity():
    x = over_white(random_rgba(4))
    assert torch.equal(random_convolution(x, torch.zeros(4), torch.Generator().manual_seed(0)), x)
    quiet = augment(random_rgba(4), AugmentConfig(**QUIET, random_convolution=1.0, random_convolution_strength=0.0))
    torch.testing.assert_close(quiet, over_white(random_rgba(4)), rtol=0, atol=1e-5)


def test_random_convolution_changes_pixels_keeps_range_and_each_pixels_strongest_channel():
    # 4 x 4 blocks of pure red, green or blue: the hardest case for a mix of channels
    primaries = torch.eye(3)[torch.randint(0, 3, (8, 8, 8), generator=torch.Generator().manual_seed(0))]
    x = primaries.permute(0, 3, 1, 2).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3).contiguous()
    out = random_convolution(x, torch.full((8,), 0.49), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every image changed
    assert torch.equal(out.argmax(dim=1), x.argmax(dim=1))  # red stays reddest, green greenest


def test_greyscale_is_pillows_luma_in_all_three_channels():
    rgb = random_rgba(1)[0, :3].permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    out = greyscale(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    np.testing.assert_allclose(out[0, 0].numpy(), expected, rtol=0, atol=0.5 / 255 + 1e-6)  # Pillow rounds


def test_greyscale_skips_the_images_whose_concept_depends_on_colour():
    rgba = random_rgba(8)
    rgba[:, 3] = 255
    keep_colour = torch.tensor([True, False, False, True, False, True, True, False])
    out = augment(rgba, AugmentConfig(**QUIET, greyscale=1.0), torch.Generator().manual_seed(0), keep_colour)
    torch.testing.assert_close(out[keep_colour], over_white(rgba[keep_colour]), rtol=0, atol=1e-5)
    grey = out[~keep_colour]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_greyscale_without_the_colour_mask_is_a_clear_error():
    with pytest.raises(ConfigError, match="keep_colour"):
        augment(random_rgba(2), AugmentConfig(greyscale=0.5))


@pytest.mark.parametrize(
    "changes, error",
    [
        (dict(posterize_bits=(1, 8)), None),
        (dict(posterize_bits=(0, 4)), "posterize_bits"),
        (dict(posterize_bits=(2, 9)), "posterize_bits"),
        (dict(posterize_bits=(5, 4)), "posterize_bits"),
        (dict(random_convolution_strength=0.0), None),
        (dict(random_convolution_strength=0.49), None),
        (dict(random_convolution_strength=0.5), "random_convolution_strength"),
        (dict(random_convolution_strength=-0.1), "random_convolution_strength"),
    ],
)
def test_style_strengths_are_checked_at_both_ends(changes, error):
    if error is None:
        AugmentConfig(**changes)
    else:
        with pytest.raises(ConfigError, match=error):
            AugmentConfig(**changes)


# ----------------------------------------------------------------------------- the label-colour rule, on emojibase


@pytest.fixture(scope="module")
def emojibase_captions(emoji_cache) -> dict[str, tuple[list[str], str]]:
    """variant hexcode -> (the captions the builder gives its images, its emojibase subgroup)."""
    held_out = held_out_pattern(load_paraphrases())
    return {
        variant.hexcode: (variant_captions(concept, variant, held_out), concept.subgroup)
        for concept in load_concepts(extract(EMOJIBASE, emoji_cache))
        for variant in concept.variants
    }


@pytest.mark.parametrize(
    "hexcode, name, colour_named",
    [
        ("2764", "red heart", True),
        ("1F34F", "green apple", True),
        ("1F535", "blue circle", True),
        ("1F536", "large orange diamond", True),
        ("1F34A", "tangerine (tagged orange)", True),
        ("1F1EB-1F1F7", "flag: France", True),
        ("1F44D-1F3FD", "thumbs up: medium skin tone", True),
        ("1F471", "person: blond hair", True),
        ("1F431", "cat face", False),
        ("1F600", "grinning face", False),
        ("1F44D", "thumbs up", False),
        ("1F3F3", "white flag (white survives greyscale)", False),
        ("1F5A4", "black heart (black survives greyscale)", False),
        ("1F680", "rocket", False),
    ],
)
def test_colour_named_emoji_are_the_ones_greyscale_would_mislabel(emojibase_captions, hexcode, name, colour_named):
    captions, subgroup = emojibase_captions[hexcode]
    assert depends_on_colour(captions, subgroup) is colour_named


def test_random_convolution_keeps_each_channels_mean():
    x = 0.3 + 0.4 * torch.rand((8, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    out = random_convolution(x, torch.full((8,), 0.49), torch.Generator().manual_seed(1))
    assert (out - x).abs().mean() > 0.02
    torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), rtol=0, atol=0.005)


@pytest.mark.cuda
def test_style_transforms_on_the_gpu_keep_range_and_the_colour_of_colour_named_concepts(cuda_device):
    rgba = random_rgba(8).to(cuda_device)
    rgba[:, 3] = 255
    keep_colour = torch.tensor([True, False] * 4, device=cuda_device)
    generator = torch.Generator(device=cuda_device).manual_seed(0)
    out = augment(rgba, AugmentConfig(**QUIET, **STYLE_ON), generator, keep_colour)
    assert out.device.type == cuda_device.type and out.shape == (8, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    grey, coloured = out[~keep_colour], out[keep_colour]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    assert (coloured[:, 0] - coloured[:, 1]).abs().amax(dim=(1, 2)).min() > 0.1
