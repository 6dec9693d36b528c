"""Building blocks of the image tower, with the seed's module and parameter names.

Keeping the names (``proj``, ``qkv_proj``, ``out_proj``, ``fc1``, ``fc2``, ``norm1``, ``norm2``)
means a ``state_dict()`` saved from the seed's code loads here with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchEmbedding(nn.Module):
    """Cuts an image into non-overlapping patches and projects each to ``embed_dim``."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class ConvolutionalStem(nn.Module):
    """Xiao et al. 2021: stride-2 3x3 convolutions, each with normalisation and ReLU, halve the image
    log2(patch_size) times, then a 1x1 convolution projects to ``embed_dim``: the same token grid as
    a patch_size patch embedding, built from overlapping local filters. Channels double per layer,
    ending at ``embed_dim`` (24, 48, 96, 192 for patch 16 and width 192).

    GroupNorm with one group, not the paper's BatchNorm: per-image statistics behave the same in
    training and serving and keep an image's result independent of the batch it is served in.
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.num_patches = (image_size // patch_size) ** 2
        depth = patch_size.bit_length() - 1  # patch_size = 2**depth
        widths = [embed_dim >> (depth - 1 - layer) for layer in range(depth)]
        layers: list[nn.Module] = []
        for channels_in, channels_out in zip([in_channels, *widths[:-1]], widths):
            layers += [
                nn.Conv2d(channels_in, channels_out, kernel_size=3, stride=2, padding=1, bias=False),
                nn.GroupNorm(1, channels_out),
                nn.ReLU(),
            ]
        self.convolutions = nn.Sequential(*layers)
        self.proj = nn.Conv2d(widths[-1], embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.convolutions(x))  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class TokenPooling(nn.Module):
    """PiT's pooling layer (Heo et al. 2021) at constant width: the patch tokens, laid back on their
    square grid, go through a stride-2 3x3 depthwise convolution (a learned local pooling that halves
    the grid's side); the CLS token passes unchanged."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(embed_dim, embed_dim, kernel_size=3, stride=2, padding=1, groups=embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls_token, patches = x[:, :1], x[:, 1:]
        batch, tokens, width = patches.shape
        side = math.isqrt(tokens)
        grid = patches.transpose(1, 2).reshape(batch, width, side, side)
        pooled = self.conv(grid).flatten(2).transpose(1, 2)  # (B, tokens / 4, D)
        return torch.cat((cls_token, pooled), dim=1)


class MultiHeadAttention(nn.Module):
    """Self-attention with q, k, v fused in one Linear, computed by ``scaled_dot_product_attention``.

    Same math as the seed's explicit ``softmax(q k^T / sqrt(d)) v``; SDPA picks a fused kernel
    (flash / memory-efficient on GPU, a fused CPU kernel otherwise) and never materialises the
    attention matrix when it does not have to.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.qkv_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention_mask``: optional bool (B, N), True for keys that may be attended to."""
        batch, tokens, _ = x.shape
        qkv = self.qkv_proj(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if attention_mask is not None:
            attention_mask = attention_mask[:, None, None, :]  # broadcast over heads and queries
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        x = x.transpose(1, 2).reshape(batch, tokens, self.embed_dim)
        return self.out_proj(x)


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()  # exact (erf) GELU, as the seed and FLAVA
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self, embed_dim: int, num_heads: int, mlp_hidden_dim: int, dropout: float = 0.0, layer_norm_eps: float = 1e-5
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.attn = MultiHeadAttention(embed_dim, num_heads)
        self.dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.mlp = MLP(embed_dim, mlp_hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x)))
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x
