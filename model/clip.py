"""CLIP: an image tower and a text tower meeting in one embedding space.

``logits = exp(logit_scale) * cosine(image, text)``, with ``logit_scale`` clamped at ln(100)
as in CLIP's training and FLAVA (values below that, the seed's ln(1/0.07) included, are
unaffected).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CLIPConfig
from .text import TextEncoder
from .vision import ViT

MAX_LOGIT_SCALE = math.log(100.0)


class ContrastiveHead(nn.Module):
    """The CLIP head over normalised embeddings: its temperature and similarity logits. CLIP and
    training's TrainedTowers share it; a subclass sets ``logit_scale``."""

    logit_scale: nn.Parameter

    def temperature(self) -> torch.Tensor:
        """exp(logit_scale), with logit_scale clamped at ln(100)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def similarity_logits(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) x (M, D) normalised embeddings -> (N, M) logits_per_image."""
        return self.temperature() * image_embeddings @ text_embeddings.t()


class CLIP(ContrastiveHead):
    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = (config or CLIPConfig()).validate()
        config = self.config
        self.image_encoder = ViT(config.vision)
        self.text_encoder = TextEncoder(config.text)
        self.image_projection: nn.Module
        self.text_projection: nn.Module
        if config.embed_dim is not None:
            self.image_projection = nn.Linear(config.vision.width, config.embed_dim, bias=config.projection_bias)
            self.text_projection = nn.Linear(config.text.width, config.embed_dim, bias=config.projection_bias)
        else:
            self.image_projection = nn.Identity()
            self.text_projection = nn.Identity()
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    @property
    def dtype(self) -> torch.dtype:
        return self.logit_scale.dtype

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) normalised pixels -> (N, D) L2-normalised image embeddings."""
        features = self.image_encoder(pixels.to(device=self.device, dtype=self.dtype))
        return F.normalize(self.image_projection(features), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(M, L) token ids and bool mask -> (M, D) L2-normalised text embeddings."""
        if mask is not None:
            mask = mask.to(self.device)
        features = self.text_encoder(ids.to(self.device), mask)
        return F.normalize(self.text_projection(features), dim=-1)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None):
        logits_per_image = self.similarity_logits(self.encode_image(pixels), self.encode_text(ids, mask))
        return logits_per_image, logits_per_image.t()
