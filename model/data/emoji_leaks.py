"""The leak check: a new style's image that is really a Twemoji glyph is dropped.

Some emoji sets fill their gaps with Twemoji art, and Twemoji is the test style: such an image in
training would leak the test set. Flags, keycaps and geometric symbols look alike in every set,
so no fixed similarity threshold separates a copy from an honest drawing. The yardstick is the
concept's own Noto image instead (Noto and Twemoji are independent drawings of the same emoji):
a new image is dropped if its distance to the Twemoji image is under LEAK_RATIO times Noto's.

The distance: both images composited over white (as the model sees them), reduced to 32 x 32 px
with a box filter, and the mean absolute difference of their RGB values in [0, 1]. The box
filter averages away what differs between two rasterisations of one drawing (a 64 px PNG against
a 128 px SVG render: anti-aliasing, half-pixel offsets) while the colours and shapes that tell
drawings apart survive.

Why a ratio of 0.15 and not "closer than Noto" (a ratio of 1): Noto's art (shaded, often other
colours: an orange play button) sits far from Twemoji, so many honest drawings are nearer Twemoji
than Noto is: of the base images of the full build, 49 % of Fluent 3D's, 35 % of EmojiOne's,
58 % of EmojiOne v1's, and of the core styles (which hold no Twemoji) 38 % of fluent-flat's and
12 % of openmoji-color's; "closer than Noto" would have dropped them all. Measured instead: 300
Twemoji SVGs (@iconify-json/twemoji 1.2.5, fetched for the measurement only, never a source)
rendered as the builder renders an iconify set lie 0.0055 from the Twemoji PNGs (median; 0.034
at most), a ratio of 0.04 (median; 0.13 at most). Honest images come that close only where every
set draws the same shape: of the ~7,000 core-style images, two fall under 0.15 (fluent-flat's
muted speaker at 0.12, openmoji-color's black small square at 0.14). At 64 px instead of 32 the
figures barely move (copies at most 0.14, the same two core images under 0.15).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LEAK_SIZE = 32
LEAK_RATIO = 0.15  # dropped if distance to Twemoji < LEAK_RATIO x Noto's distance to Twemoji


def leak_features(path: Path) -> np.ndarray:
    """(LEAK_SIZE, LEAK_SIZE, 3) float32 in [0, 1]: the image over white, box-filtered."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB").resize((LEAK_SIZE, LEAK_SIZE), Image.Resampling.BOX)
    return np.asarray(flat, dtype=np.float32) / 255.0


def image_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def is_twemoji_copy(image: np.ndarray, twemoji: np.ndarray, noto: np.ndarray) -> tuple[bool, float, float]:
    """(dropped, distance to Twemoji, Noto's distance to Twemoji)."""
    to_twemoji, noto_to_twemoji = image_distance(image, twemoji), image_distance(noto, twemoji)
    return to_twemoji < LEAK_RATIO * noto_to_twemoji, to_twemoji, noto_to_twemoji
