"""The image tower: a Vision Transformer that returns the CLS token after the final LayerNorm.

Two options for training on little data (VisionConfig.stem, VisionConfig.pool_after) change how
tokens are made and how many the later blocks see; it stays a ViT with a CLS token either way.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import VisionConfig
from .layers import ConvolutionalStem, PatchEmbedding, TokenPooling, TransformerBlock


class ViT(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        width = config.width
        stem = ConvolutionalStem if config.stem == "convolutional" else PatchEmbedding
        self.patch_embed = stem(config.image_size, config.patch_size, config.in_channels, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, width))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(width, config.num_heads, config.mlp_dim, config.dropout, config.layer_norm_eps)
                for _ in range(config.num_layers)
            ]
        )
        self.token_pool = TokenPooling(width) if config.pool_after else None
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        # The seed starts both at zero; small random values (as timm) train better from scratch.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised pixels -> (B, width) CLS features."""
        x = self.patch_embed(pixels)  # (B, N, D)
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1) + self.pos_embed  # (B, 1 + N, D)
        x = self.dropout(x)
        for index, block in enumerate(self.blocks):
            if self.token_pool is not None and index == self.config.pool_after:
                x = self.token_pool(x)  # (B, 1 + N / 4, D)
            x = block(x)
        return self.norm(x)[:, 0]
