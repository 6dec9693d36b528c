"""The attention and block math against plain, explicit reference math."""

import math

import torch
import torch.nn.functional as F

from model.layers import MultiHeadAttention, TransformerBlock


def plain_attention(module: MultiHeadAttention, x, key_mask=None):
    """softmax(q k^T / sqrt(d)) v written out, as in the seed."""
    batch, tokens, _ = x.shape
    qkv = module.qkv_proj(x).reshape(batch, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(module.head_dim)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return module.out_proj(out.transpose(1, 2).reshape(batch, tokens, module.embed_dim))


def test_sdpa_attention_equals_plain_math():
    torch.manual_seed(0)
    attention = MultiHeadAttention(48, 4)
    x = torch.randn(3, 11, 48)
    assert torch.allclose(attention(x), plain_attention(attention, x), atol=1e-5)


def test_sdpa_attention_with_key_mask_equals_plain_math():
    torch.manual_seed(1)
    attention = MultiHeadAttention(32, 2)
    x = torch.randn(2, 7, 32)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    assert torch.allclose(attention(x, mask), plain_attention(attention, x, mask), atol=1e-5)


def test_transformer_block_is_pre_layernorm_with_residuals():
    torch.manual_seed(2)
    block = TransformerBlock(32, 4, 64, layer_norm_eps=1e-12).eval()
    x = torch.randn(2, 5, 32)
    h = x + plain_attention(block.attn, F.layer_norm(x, (32,), block.norm1.weight, block.norm1.bias, 1e-12))
    n = F.layer_norm(h, (32,), block.norm2.weight, block.norm2.bias, 1e-12)
    expected = h + F.linear(
        F.gelu(F.linear(n, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight, block.mlp.fc2.bias
    )
    assert block.norm1.eps == 1e-12
    assert torch.allclose(block(x), expected, atol=1e-5)
