"""The text tower: token + position embeddings, a transformer encoder, pooling.

Defects of the seed fixed here (seed: ../shared/seed/README.md):
  * the seed feeds (batch, tokens, dim) into a sequence-first ``nn.TransformerEncoder``, so
    tokens of one text never attend to each other while different texts of a batch do;
    here the encoder is ``batch_first=True``;
  * the seed has no padding mask, so a text's embedding depends on how long the other texts
    in its batch are; here padded keys are masked in attention and pooling averages only
    real tokens (masked mean).
The encoder is torch's own ``nn.TransformerEncoder`` (its attention runs through
``scaled_dot_product_attention``), which keeps the seed's parameter names.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

from .config import TextConfig

# torch warns on every padded batch that its nested-tensor fast path is a prototype; we rely on it
# only for speed (padded outputs are never read), so the warning tells a user nothing.
warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")


class PositionalEncoding(nn.Module):
    """The seed's fixed sinusoidal positions, added to the token embeddings."""

    pe: torch.Tensor  # (1, max_len, d_model), a registered buffer

    def __init__(self, d_model: int, max_len: int = 512):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))  # persistent: the seed's state_dict holds it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.size(1)]


class LearnedPositionalEncoding(nn.Module):
    """Learned absolute positions (BERT). Same key (``pe``) as the sinusoidal table."""

    def __init__(self, d_model: int, max_len: int = 512):
        super().__init__()
        self.pe = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.normal_(self.pe, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.size(1)]


class TextEncoder(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.embeddings = nn.Embedding(config.vocab_size, width)
        position_class = PositionalEncoding if config.positions == "sinusoidal" else LearnedPositionalEncoding
        self.positional_encoding = position_class(width, config.max_len)
        self.embedding_norm = nn.LayerNorm(width, eps=config.layer_norm_eps) if config.embedding_norm else nn.Identity()
        self.embedding_dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            width,
            config.num_heads,
            config.mlp_dim,
            config.dropout,
            activation=config.activation,
            layer_norm_eps=config.layer_norm_eps,
            batch_first=True,
            norm_first=config.pre_norm,
        )
        final_norm = nn.LayerNorm(width, eps=config.layer_norm_eps) if config.pre_norm else None
        self.transformer_encoder = nn.TransformerEncoder(
            layer,
            config.num_layers,
            norm=final_norm,
            # nested tensors (the fast path that skips padding) only support post-LN layers
            enable_nested_tensor=not config.pre_norm,
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids and bool mask (True = real token) -> (B, width) pooled features."""
        if mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        mask = mask.bool()
        x = self.positional_encoding(self.embeddings(ids))
        x = self.embedding_dropout(self.embedding_norm(x))
        x = self.transformer_encoder(x, src_key_padding_mask=~mask)  # (B, L, D)
        if self.config.pooling == "cls":
            return x[:, 0]
        weights = mask.unsqueeze(-1).to(x.dtype)
        # padded positions may hold anything (zeros on the nested-tensor path): weight them out
        summed = torch.where(weights.bool(), x, torch.zeros_like(x)).sum(dim=1)
        return summed / weights.sum(dim=1).clamp(min=1)
