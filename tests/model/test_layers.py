"""The attention and block math against plain, explicit reference math."""

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import VisionConfig
from model.errors import ConfigError
from model.layers import ConvolutionalStem, MultiHeadAttention, TokenPooling, TransformerBlock
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


# ----------------------------------------------------------------------------- small-data options


def convolution_by_hand(x, weight, bias, stride, padding):
    """A 2-d convolution as a sum over kernel offsets of shifted, strided slices (no conv2d)."""
    kernel = weight.shape[-1]
    padded = F.pad(x, (padding,) * 4)
    out_size = (x.shape[-1] + 2 * padding - kernel) // stride + 1
    span = stride * (out_size - 1) + 1
    out = 0
    for row in range(kernel):
        for column in range(kernel):
            window = padded[:, :, row : row + span : stride, column : column + span : stride]  # (B, Cin, o, o)
            if weight.shape[1] == x.shape[1]:  # dense: mix every input channel
                out = out + torch.einsum("bihw,oi->bohw", window, weight[:, :, row, column])
            else:  # depthwise: each channel its own filter
                out = out + window * weight[:, 0, row, column][None, :, None, None]
    return out if bias is None else out + bias[None, :, None, None]


def group_norm_by_hand(x, norm):
    """One group: each image normalised over all its channels and pixels, then a per-channel affine."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight[None, :, None, None] + norm.bias[
        None, :, None, None
    ]


def randomised(module):
    torch.manual_seed(4)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return module.eval()


def test_the_convolutional_stem_against_its_layers_written_out():
    """Patch 8, width 32: three stride-2 3x3 convolutions (8, 16, 32 channels) with one-group norm and
    ReLU take 32 px to a 4 x 4 grid, then a 1x1 projection; rows are tokens in reading order."""
    stem = randomised(ConvolutionalStem(image_size=32, patch_size=8, in_channels=3, embed_dim=32)).double()
    convolutions = [layer for layer in stem.convolutions if isinstance(layer, nn.Conv2d)]
    assert [conv.out_channels for conv in convolutions] == [8, 16, 32]
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    x = pixels
    for conv, norm in zip(convolutions, [layer for layer in stem.convolutions if isinstance(layer, nn.GroupNorm)]):
        x = group_norm_by_hand(convolution_by_hand(x, conv.weight, None, stride=2, padding=1), norm).clamp(min=0)
    grid = torch.einsum("bihw,oi->bhwo", x, stem.proj.weight[:, :, 0, 0]) + stem.proj.bias  # (B, 4, 4, D)
    with torch.no_grad():
        torch.testing.assert_close(stem(pixels), grid.reshape(2, 16, 32), rtol=0, atol=1e-9)


def test_token_pooling_halves_the_grid_with_a_depthwise_convolution_and_keeps_cls():
    pool = randomised(TokenPooling(6)).double()
    tokens = torch.randn(2, 1 + 16, 6, dtype=torch.float64)  # CLS + a 4 x 4 grid
    grid = tokens[:, 1:].reshape(2, 4, 4, 6).permute(0, 3, 1, 2)  # token (row, column) -> pixel (row, column)
    pooled = convolution_by_hand(grid, pool.conv.weight, pool.conv.bias, stride=2, padding=1)  # (B, 6, 2, 2)
    expected = torch.cat((tokens[:, :1], pooled.permute(0, 2, 3, 1).reshape(2, 4, 6)), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(pool(tokens), expected, rtol=0, atol=1e-9)


def test_a_vit_with_pooling_runs_its_later_blocks_on_the_pooled_tokens():
    """pool_after=1 of 2 blocks: block 0 sees CLS + 16 tokens, block 1 sees CLS + 4, the output is
    CLS after the final norm; recomputed from the modules called one by one."""
    config = VisionConfig(image_size=16, patch_size=4, width=8, num_layers=2, num_heads=2, mlp_dim=16, pool_after=1)
    vit = randomised(ViT(config))
    pixels = torch.randn(3, 3, 16, 16)
    seen = []
    for block in vit.blocks:
        block.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    with torch.no_grad():
        x = torch.cat((vit.cls_token.expand(3, -1, -1), vit.patch_embed(pixels)), dim=1) + vit.pos_embed
        x = vit.blocks[1](vit.token_pool(vit.blocks[0](x)))
        expected = vit.norm(x)[:, 0]
        seen.clear()
        torch.testing.assert_close(vit(pixels), expected, rtol=0, atol=1e-6)
    assert seen == [17, 5]


def test_the_small_data_options_keep_an_image_independent_of_its_batch():
    """Serving batches requests together: per-image normalisation means a batch changes nothing."""
    config = VisionConfig(
        image_size=32, patch_size=8, width=16, num_layers=2, num_heads=2, mlp_dim=32, stem="convolutional", pool_after=1
    )
    vit = randomised(ViT(config))
    pixels = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        alone = torch.cat([vit(image[None]) for image in pixels])
        torch.testing.assert_close(vit(pixels), alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"stem": "convolutional", "patch_size": 16}, None),
        ({"stem": "convolutional", "patch_size": 2, "image_size": 64}, None),
        ({"stem": "convolutional", "patch_size": 12, "image_size": 48}, "power of two"),
        ({"stem": "convolution"}, "vision.stem"),
        ({"pool_after": 5}, None),  # the last block pooled into: num_layers - 1
        ({"pool_after": 6}, "pool_after 6"),
        ({"pool_after": -1}, "pool_after -1"),
        ({"pool_after": 1, "patch_size": 32}, None),  # a 2 x 2 grid pools to 1 x 1
        ({"pool_after": 1, "image_size": 48}, "even side"),  # a 3 x 3 grid
    ],
)
def test_small_data_options_are_validated(changes, error):
    config = VisionConfig(**{"image_size": 64, "width": 32, "num_layers": 6, "num_heads": 2, "mlp_dim": 64, **changes})
    if error is None:
        config.validate()
        assert ViT(config)(torch.zeros(1, 3, config.image_size, config.image_size)).shape == (1, 32)
    else:
        with pytest.raises(ConfigError, match=error):
            config.validate()
