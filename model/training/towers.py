"""The trained part of a CLIP: the image tower, both projections and the temperature."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..clip import ContrastiveHead
from ..config import VisionConfig
from ..errors import ModelError
from ..pixels import normalize_rgb
from ..vision import ViT
from .recipe import Recipe


class TrainedTowers(ContrastiveHead):
    """Under the same parameter names as a CLIP, so its state_dict drops into one; its temperature
    and logits are the CLIP head's (clamped at ln 100), its pixel normalisation the server's."""

    def __init__(self, recipe: Recipe):
        super().__init__()
        self.vision = VisionConfig(**recipe.vision)
        self.image_encoder = ViT(self.vision)
        self.image_projection = nn.Linear(self.vision.width, recipe.embed_dim, bias=False)
        self.text_projection = nn.Linear(recipe.text_width, recipe.embed_dim, bias=False)
        if recipe.text_projection == "identity":
            if recipe.text_width != recipe.embed_dim:
                raise ModelError(
                    f"text_projection 'identity' needs embed_dim equal to the text width {recipe.text_width}, "
                    f"not {recipe.embed_dim}"
                )
            nn.init.eye_(self.text_projection.weight)
            self.text_projection.weight.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.tensor(float(recipe.logit_scale_init)))

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> the image tower's input, with its vision config's mean and std."""
        return normalize_rgb(rgb, self.vision)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.image_encoder(pixels)), dim=-1)

    def embed_texts(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(pooled), dim=-1)

    def forward(self, pixels: torch.Tensor, *pooled_texts: torch.Tensor) -> list[torch.Tensor]:
        """Normalised pixels (B, 3, S, S) and sets of pooled text features (K, T) -> for each set,
        the images' logits against its texts (B, K). One call, so DistributedDataParallel sees
        every parameter the losses use."""
        images = self.embed_images(pixels)
        return [self.similarity_logits(images, self.embed_texts(texts)) for texts in pooled_texts]
