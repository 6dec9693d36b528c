"""The attention and block math against plain, explicit reference math."""

import copy
import math

import torch
import torch.nn.functional as F

from model.config import VisionConfig
from model.layers import MultiHeadAttention, TransformerBlock
from model.vision import ViT


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


def layer_norm_by_hand(x, norm):
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def gelu_by_hand(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def attention_by_hand(attention: MultiHeadAttention, x):
    """Head by head, query by query: each head takes its slice of the q, k and v rows of qkv_proj."""
    width, head_dim = attention.embed_dim, attention.head_dim
    qkv = x @ attention.qkv_proj.weight.t() + attention.qkv_proj.bias
    heads = []
    for head in range(attention.num_heads):
        columns = slice(head * head_dim, (head + 1) * head_dim)
        q, k, v = qkv[:, columns], qkv[:, width:][:, columns], qkv[:, 2 * width :][:, columns]
        weights = torch.exp(q @ k.t() / math.sqrt(head_dim))
        heads.append((weights / weights.sum(dim=1, keepdim=True)) @ v)
    return torch.cat(heads, dim=1) @ attention.out_proj.weight.t() + attention.out_proj.bias


def test_a_one_layer_vit_against_its_forward_written_out_step_by_step():
    """A 4 x 4 image in four 2 x 2 patches, width 4, two heads, every parameter random, recomputed in
    float64 with explicit sums: patches cut by hand (no convolution), CLS first, positions added,
    pre-LN attention and exact-GELU MLP with residuals, the final LayerNorm, the CLS row out."""
    torch.manual_seed(3)
    vit = ViT(VisionConfig(image_size=4, patch_size=2, width=4, num_layers=1, num_heads=2, mlp_dim=8)).eval()
    with torch.no_grad():
        for parameter in vit.parameters():
            parameter.copy_(torch.randn_like(parameter))
    pixels = torch.randn(2, 3, 4, 4)
    expected = []
    reference = copy.deepcopy(vit).double()
    block = reference.blocks[0]
    assert isinstance(block, TransformerBlock)
    projection = reference.patch_embed.proj
    for image in pixels.double():
        patches = [image[:, row : row + 2, column : column + 2].reshape(-1) for row in (0, 2) for column in (0, 2)]
        tokens = [projection.weight.reshape(4, -1) @ patch + projection.bias for patch in patches]
        x = torch.stack([reference.cls_token[0, 0], *tokens]) + reference.pos_embed[0]
        x = x + attention_by_hand(block.attn, layer_norm_by_hand(x, block.norm1))
        hidden = gelu_by_hand(layer_norm_by_hand(x, block.norm2) @ block.mlp.fc1.weight.t() + block.mlp.fc1.bias)
        x = x + hidden @ block.mlp.fc2.weight.t() + block.mlp.fc2.bias
        expected.append(layer_norm_by_hand(x, reference.norm)[0])
    with torch.no_grad():
        torch.testing.assert_close(vit(pixels), torch.stack(expected).float(), rtol=0, atol=1e-5)
