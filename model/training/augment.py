"""Augmentations that keep an emoji's label true, in torch alone (they run on the training host).

Input: a batch of RGBA drawings, uint8 (B, 4, H, W). Output: RGB floats in [0, 1], (B, 3, H, W).
Transparency is composited over varied backgrounds; then random scale/translate/small rotation,
blur, pixel noise and JPEG artifacts. Never a horizontal flip (arrows, text and directional
emoji would change meaning) and never a hue change (colour is in the labels: "red heart").

Style randomisation (each off by default, so a recipe without it trains exactly as before): the
drawing's outline grown or shrunk by a pixel and its colours flattened to a few levels, before
compositing; then a random convolution blended in at low strength, and greyscale for images whose
concept does not depend on colour (``depends_on_colour``: the caller passes the mask).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.75, 1.15)  # drawing size relative to the frame
    translate: float = 0.1  # largest shift, as a fraction of the side
    rotate_degrees: float = 10.0
    white_background: float = 0.5  # share of plain white backgrounds (what serving composites over)
    blur: float = 0.25  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.4, 1.0)
    noise: float = 0.25  # probability of Gaussian pixel noise
    noise_std: float = 0.04
    jpeg: float = 0.25  # probability of JPEG compression artifacts
    jpeg_quality: tuple[float, float] = (25.0, 85.0)
    # style randomisation; every probability defaults to 0 (off)
    outline: float = 0.0  # probability of growing or shrinking (half each) the drawing's alpha by 1 px
    posterize: float = 0.0  # probability of flattening the drawing's colours to 2**bits levels per channel
    posterize_bits: tuple[int, int] = (2, 5)  # bits drawn uniformly from this range, both ends included
    random_convolution: float = 0.0  # probability of RandConv (Xu et al. 2021), a random 1x1 or 3x3 conv
    random_convolution_strength: float = 0.3  # the largest blend weight of the convolved image (< 0.5)
    greyscale: float = 0.0  # probability of greyscale, on images whose concept does not depend on colour

    def __post_init__(self):
        low, high = self.posterize_bits
        if not 1 <= low <= high <= 8:
            raise ConfigError(
                f"posterize_bits must be (low, high) with 1 <= low <= high <= 8, not {self.posterize_bits}"
            )
        if not 0 <= self.random_convolution_strength < 0.5:
            raise ConfigError(
                "random_convolution_strength must be in [0, 0.5): below one half a pixel's strongest channel "
                f"stays its strongest, so colours keep their names; not {self.random_convolution_strength}"
            )


def augment(
    rgba: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
    keep_colour: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 (B, 4, H, W) RGBA -> float (B, 3, H, W) RGB in [0, 1], each image differently augmented.
    ``keep_colour``: (B,) bool, True for the images whose concept depends on colour (never greyscaled);
    needed when ``config.greyscale`` is on."""
    if config.greyscale and keep_colour is None:
        raise ConfigError(
            "greyscale needs keep_colour, the images whose concept depends on colour (see depends_on_colour)"
        )
    x = rgba.float() / 255.0
    x = _style(x, config.outline, generator, lambda chosen: outline(chosen, _coin(chosen, generator)))
    x = _style(
        x,
        config.posterize,
        generator,
        lambda chosen: posterize(chosen, _bits(chosen, config.posterize_bits, generator)),
    )
    premultiplied = torch.cat((x[:, :3] * x[:, 3:], x[:, 3:]), dim=1)  # so resampling leaves no dark fringes
    premultiplied = random_affine(premultiplied, config, generator)
    color, alpha = premultiplied[:, :3], premultiplied[:, 3:]
    x = color + backgrounds(x.shape[0], x.shape[-2], x.shape[-1], config, x.device, generator) * (1 - alpha)
    x = _style(
        x,
        config.random_convolution,
        generator,
        lambda chosen: random_convolution(
            chosen, _uniform(chosen, (0.0, config.random_convolution_strength), generator), generator
        ),
    )
    x = _style(x, config.greyscale, generator, greyscale, allowed=None if keep_colour is None else ~keep_colour)
    x = _some(
        x, config.blur, generator, lambda chosen: gaussian_blur(chosen, _uniform(chosen, config.blur_sigma, generator))
    )
    x = _some(
        x,
        config.noise,
        generator,
        lambda chosen: chosen + torch.randn(chosen.shape, generator=generator, device=x.device) * config.noise_std,
    ).clamp(0, 1)
    if x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0:
        x = _some(
            x,
            config.jpeg,
            generator,
            lambda chosen: jpeg_artifacts(chosen, _uniform(chosen, config.jpeg_quality, generator)),
        )
    return x


def _some(
    x: torch.Tensor, probability: float, generator, transform, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply ``transform`` to a random share ``probability`` of the images (of those ``allowed``, (B,)
    bool, if given). On the CPU it is computed on those only; on a GPU on all of them and blended,
    because picking the chosen ones out waits for the device (a host sync per call) and the GPU has
    the spare arithmetic."""
    chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < probability
    if allowed is not None:
        chosen &= allowed
    if x.device.type != "cpu":
        return torch.where(chosen.view(-1, 1, 1, 1), transform(x), x)
    chosen = chosen.nonzero().squeeze(1)
    if len(chosen) == 0:
        return x
    x = x.clone()
    x[chosen] = transform(x[chosen])
    return x


def _style(x: torch.Tensor, probability: float, generator, transform, allowed: torch.Tensor | None = None):
    """``_some`` for the style transforms, which draw no random numbers when off, so that a recipe
    without them gets the very augmentations (and generator states) it got before they existed."""
    return _some(x, probability, generator, transform, allowed) if probability > 0 else x


def outline(x: torch.Tensor, grow: torch.Tensor) -> torch.Tensor:
    """Straight (not premultiplied) RGBA (B, 4, H, W): alpha dilated by one pixel (3x3 max) where
    ``grow`` (B,) is True, eroded by one where False; outside the frame counts as transparent.
    Newly covered pixels take their covered neighbours' alpha-weighted mean colour (no dark fringe
    from the zeroed colour of transparent pixels), so a drawing's outline thickens in its own colour."""
    color, alpha = x[:, :3], x[:, 3:]
    padded_alpha = F.pad(alpha, (1, 1, 1, 1))
    dilated, eroded = _3x3(padded_alpha, torch.maximum), _3x3(padded_alpha, torch.minimum)
    fill = _3x3(F.pad(color * alpha, (1, 1, 1, 1)), torch.add) / _3x3(padded_alpha, torch.add).clamp(min=1e-6)
    color = torch.where(alpha > 0, color, fill)
    return torch.cat((color, torch.where(grow.view(-1, 1, 1, 1), dilated, eroded)), dim=1)


def _3x3(padded: torch.Tensor, combine) -> torch.Tensor:
    """(B, C, H + 2, W + 2) -> (B, C, H, W): ``combine`` (max, min, add) over each 3x3 neighbourhood,
    as rows then columns of shifted views (several times faster on the CPU than max_pool2d)."""
    rows = combine(combine(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])
    return combine(combine(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """RGB or RGBA (B, 3 or 4, H, W) in [0, 1]: the colour channels flattened to 2**bits levels (bits
    (B,), one per image), each 8-bit value's top ``bits`` bits spread over the full range so that
    black and white stay as they are; alpha is kept."""
    levels = (2**bits).to(x.dtype).view(-1, 1, 1, 1)
    flat = torch.floor(torch.round(x[:, :3] * 255) * levels / 256) / (levels - 1)
    return torch.cat((flat, x[:, 3:]), dim=1)


def random_convolution(x: torch.Tensor, strength: torch.Tensor, generator) -> torch.Tensor:
    """RandConv (Xu et al. 2021) on (B, 3, H, W) in [0, 1]: each image through its own random conv,
    a 3x3 or (half the time) a 1x1 kernel with N(0, 1) weights mixing the RGB channels, then blended
    in with weight ``strength`` (B,). The convolved image is matched to the original's mean and
    spread per channel, so the image's overall colour balance is kept; clamped to [0, 1] and
    blended at a weight below one half, a pixel's strongest channel stays its strongest (a red
    stays reddest): texture and local contrast change, the colour names in the labels stay true."""
    batch, channels, height, width = x.shape
    kernels = torch.randn((batch, channels, channels, 3, 3), generator=generator, device=x.device, dtype=x.dtype)
    one_by_one = torch.rand(batch, generator=generator, device=x.device) < 0.5
    centre = torch.zeros((3, 3), device=x.device, dtype=x.dtype)
    centre[1, 1] = 1
    kernels = torch.where(one_by_one.view(-1, 1, 1, 1, 1), kernels * centre, kernels)
    padded = F.pad(x.reshape(1, batch * channels, height, width), (1, 1, 1, 1), mode="replicate")
    convolved = F.conv2d(padded, kernels.view(batch * channels, channels, 3, 3), groups=batch)
    convolved = convolved.view(batch, channels, height, width)
    mean, spread = convolved.mean(dim=(2, 3), keepdim=True), convolved.std(dim=(2, 3), keepdim=True)
    matched = (convolved - mean) / (spread + 1e-6) * x.std(dim=(2, 3), keepdim=True) + x.mean(dim=(2, 3), keepdim=True)
    return torch.lerp(x, matched.clamp(0, 1), strength.view(-1, 1, 1, 1))


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> the ITU-R 601 luma (Pillow's convert("L")) in all three channels."""
    luma = torch.einsum("c,bchw->bhw", _YCBCR[0].to(x.device, x.dtype), x)
    return luma.unsqueeze(1).expand_as(x).contiguous()


# Colour words whose colour greyscale destroys. Black, white, grey and silver are left out: greyscale
# keeps luminance, so a black cat or a white flag stays what its name says.
_COLOUR_WORDS = re.compile(
    r"\b(red|orange|yellow|green|blue|purple|violet|pink|brown|gold|golden|bronze|copper|rainbow|blond|blonde"
    r"|ginger|redhead|cyan|magenta|turquoise|teal|beige|colou?red|colou?rful|skin tones?)\b",
    re.IGNORECASE,
)
# emojibase subgroups whose concepts are told apart by colour alone (France and Italy differ in one stripe)
_COLOUR_SUBGROUPS = {"country-flag", "subdivision-flag"}


def depends_on_colour(texts: Iterable[str], subgroup: str | None = None) -> bool:
    """Whether a concept with these names and captions (and emojibase subgroup) would be mislabelled
    in grey: a colour word in any text ("red heart", "thumbs up: dark skin tone"), or a flag."""
    return subgroup in _COLOUR_SUBGROUPS or any(_COLOUR_WORDS.search(text) for text in texts)


def random_affine(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Scale, shift and rotate each image about its centre; uncovered pixels become transparent."""
    scale = _uniform(x, config.scale, generator)
    angle = _uniform(x, (-config.rotate_degrees, config.rotate_degrees), generator) * math.pi / 180
    shift = _uniform(x, (-config.translate, config.translate), generator, count=2) * 2  # grid units span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack((torch.stack((cos, -sin, shift[:, 0]), 1), torch.stack((sin, cos, shift[:, 1]), 1)), 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def backgrounds(count: int, height: int, width: int, config: AugmentConfig, device, generator) -> torch.Tensor:
    """(count, 3, H, W): white, a solid colour, a two-colour gradient, or soft colour blotches."""

    def colors(n: int) -> torch.Tensor:
        return torch.rand((count, 3, n, n), generator=generator, device=device)

    # a 2x2 grid of colours stretched over the frame is a gradient; equal corners give a solid colour
    corners = colors(2)
    solid = torch.rand((count, 1, 1, 1), generator=generator, device=device) < 0.4
    corners = torch.where(solid, corners[:, :, :1, :1].expand_as(corners), corners)
    grid = torch.where(
        torch.rand((count, 1, 1, 1), generator=generator, device=device) < 0.3,
        colors(4),
        F.interpolate(corners, size=(4, 4), mode="bilinear", align_corners=True),
    )
    background = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=True)
    white = torch.rand((count, 1, 1, 1), generator=generator, device=device) < config.white_background
    return torch.where(white, torch.ones_like(background), background)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own sigma (5x5 kernel, one grouped convolution)."""
    batch, channels, height, width = x.shape
    offsets = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    weights = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)  # (B, 5)
    kernels = (weights[:, :, None] * weights[:, None, :]).repeat_interleave(channels, dim=0)[:, None]
    padded = F.pad(x.reshape(1, batch * channels, height, width), (2, 2, 2, 2), mode="replicate")
    return F.conv2d(padded, kernels, groups=batch * channels).view(batch, channels, height, width)


# The JPEG standard's (Annex K) quantisation tables, in 0-255 pixel units.
_LUMA_TABLE = [
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
]
_CHROMA_TABLE = (
    [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 38
)


def jpeg_artifacts(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """What a JPEG round trip at ``quality`` (1-100, one per image) does to (B, 3, H, W) in [0, 1]:
    YCbCr, 8x8 block DCT, quantisation with the standard tables scaled by quality, and back.
    (No chroma subsampling; enough to teach the blocky ringing of real JPEGs.)"""
    batch, _, height, width = x.shape
    ycbcr = _rgb_to_ycbcr(x) - 0.5
    blocks = ycbcr.view(batch, 3, height // 8, 8, width // 8, 8).transpose(3, 4)  # (B, 3, h, w, 8, 8)
    dct = _dct_matrix(x.device, x.dtype)
    coefficients = dct @ blocks @ dct.t()
    step = _quantisation_steps(quality, x.device, x.dtype)  # (B, 3, 1, 1, 8, 8)
    coefficients = torch.round(coefficients / step) * step
    blocks = dct.t() @ coefficients @ dct
    ycbcr = blocks.transpose(3, 4).reshape(batch, 3, height, width) + 0.5
    return _ycbcr_to_rgb(ycbcr).clamp(0, 1)


def _quantisation_steps(quality: torch.Tensor, device, dtype) -> torch.Tensor:
    quality = quality.clamp(1, 100)
    percent = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality).view(-1, 1, 1)  # libjpeg's scaling
    tables = torch.tensor([_LUMA_TABLE, _CHROMA_TABLE, _CHROMA_TABLE], device=device, dtype=dtype).view(1, 3, 64)
    steps = torch.floor((tables * percent + 50) / 100).clamp(min=1) / 255.0
    return steps.view(-1, 3, 1, 1, 8, 8)


def _dct_matrix(device, dtype) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix."""
    k = torch.arange(8, device=device, dtype=dtype).view(-1, 1)
    n = torch.arange(8, device=device, dtype=dtype).view(1, -1)
    matrix = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    matrix[0] = matrix[0] / math.sqrt(2)
    return matrix


_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    matrix = _YCBCR.to(x.device, x.dtype)
    offset = torch.tensor([0.0, 0.5, 0.5], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.einsum("ij,bjhw->bihw", matrix, x) + offset


def _ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    matrix = torch.linalg.inv(_YCBCR).to(x.device, x.dtype)
    offset = torch.tensor([0.0, 0.5, 0.5], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.einsum("ij,bjhw->bihw", matrix, x - offset)


def _coin(x: torch.Tensor, generator) -> torch.Tensor:
    return torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5


def _bits(x: torch.Tensor, bounds: tuple[int, int], generator) -> torch.Tensor:
    return torch.randint(bounds[0], bounds[1] + 1, (x.shape[0],), generator=generator, device=x.device)


def _uniform(x: torch.Tensor, bounds: tuple[float, float], generator, count: int = 1) -> torch.Tensor:
    low, high = bounds
    values = torch.rand((x.shape[0], count), generator=generator, device=x.device, dtype=x.dtype) * (high - low) + low
    return values.squeeze(1) if count == 1 else values
