"""Pixel math on tensors, shared by serving (model.preprocess) and training (model.training).

Imports torch alone, so the training host, which has no Pillow, uses the very normalisation the
server applies, with the mean and std of the model's own vision config.
"""

from __future__ import annotations

import torch

from .config import VisionConfig


def normalize_rgb(rgb: torch.Tensor, vision: VisionConfig) -> torch.Tensor:
    """(N, C, H, W) float RGB in [0, 1] -> the model's input: (rgb - vision.mean) / vision.std per channel."""
    mean = torch.tensor(vision.mean, device=rgb.device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(vision.std, device=rgb.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (rgb - mean) / std


def over_white(rgba: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 4, H, W) RGBA -> float RGB in [0, 1] composited over white: what
    model.preprocess.to_rgb does to a transparent image, before its rounding to 8 bits."""
    x = rgba.float() / 255.0
    return x[:, :3] * x[:, 3:] + (1 - x[:, 3:])
