"""Pixel math on tensors, shared by serving (model.preprocess) and training (model.training).

Imports torch alone, so the training host, which has no Pillow, uses the very normalisation the
server applies, with the mean and std of the model's own vision config.
"""

from __future__ import annotations

import torch

from .config import VisionConfig


def normalize_rgb(rgb: torch.Tensor, vision: VisionConfig) -> torch.Tensor:
    """(N, C, H, W) float RGB in [0, 1] -> the model's input: (rgb - vision.mean) / vision.std per channel."""
    mean, std = (_channel_constants(values, rgb.device) for values in (vision.mean, vision.std))
    return (rgb - mean) / std


def _channel_constants(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1) float32 on ``device``, copied there without waiting: torch.tensor(..., device=cuda)
    copies synchronously, which would make every batch wait for the GPU to finish the one before."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(device, non_blocking=True)


def over_white(rgba: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 4, H, W) RGBA -> float RGB in [0, 1] composited over white: what
    model.preprocess.to_rgb does to a transparent image, before its rounding to 8 bits."""
    x = rgba.float() / 255.0
    return x[:, :3] * x[:, 3:] + (1 - x[:, 3:])
