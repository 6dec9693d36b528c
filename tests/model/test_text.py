"""The text tower against a plain-math reference, option by option, and padding invariance."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.config import TextConfig
from model.text import PositionalEncoding, TextEncoder

SMALL = dict(vocab_size=30522, width=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=40, dropout=0.0)


def reference_text_tower(encoder: TextEncoder, ids, mask):
    """The whole text tower written out with explicit math, reading only the encoder's weights."""
    config = encoder.config
    width, heads, eps = config.width, config.num_heads, config.layer_norm_eps
    activation = F.gelu if config.activation == "gelu" else F.relu
    layer_norm = lambda x, norm: F.layer_norm(x, (width,), norm.weight, norm.bias, eps)  # noqa: E731

    x = encoder.embeddings.weight[ids] + encoder.positional_encoding.pe[0, : ids.shape[1]]
    if config.embedding_norm:
        x = layer_norm(x, encoder.embedding_norm)

    def attention(layer, h):
        batch, tokens, _ = h.shape
        q, k, v = F.linear(h, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, dim=-1)
        split = lambda t: t.view(batch, tokens, heads, width // heads).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(width // heads)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(batch, tokens, width)
        return layer.self_attn.out_proj(out)

    def feed_forward(layer, h):
        return layer.linear2(activation(layer.linear1(h)))

    for layer in encoder.transformer_encoder.layers:
        if config.pre_norm:
            x = x + attention(layer, layer_norm(x, layer.norm1))
            x = x + feed_forward(layer, layer_norm(x, layer.norm2))
        else:
            x = layer_norm(x + attention(layer, x), layer.norm1)
            x = layer_norm(x + feed_forward(layer, x), layer.norm2)
    if config.pre_norm:
        x = layer_norm(x, encoder.transformer_encoder.norm)
    if config.pooling == "cls":
        return x[:, 0]
    weights = mask.unsqueeze(-1).float()
    return (x * weights).sum(1) / weights.sum(1)


def padded_batch():
    torch.manual_seed(5)
    ids = torch.randint(1000, 30522, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    return ids.masked_fill(~mask, 0), mask


OPTIONS = {
    "seed defaults": {},
    "gelu": dict(activation="gelu"),
    "eps 1e-12": dict(layer_norm_eps=1e-12),
    "learned positions + embedding norm": dict(positions="learned", embedding_norm=True),
    "pre-LN with final norm": dict(pre_norm=True),
    "cls pooling": dict(pooling="cls"),
    "minilm-like": dict(activation="gelu", layer_norm_eps=1e-12, positions="learned", embedding_norm=True),
    "flava-like": dict(
        activation="gelu", layer_norm_eps=1e-12, positions="learned", embedding_norm=True, pre_norm=True, pooling="cls"
    ),
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_text_tower_matches_plain_math(options):
    torch.manual_seed(0)
    encoder = TextEncoder(TextConfig(**SMALL, **options)).eval()
    for parameter in encoder.parameters():  # LayerNorm weights start at 1/0: randomise so they matter
        parameter.data.add_(torch.randn_like(parameter) * 0.1)
    ids, mask = padded_batch()
    with torch.no_grad():
        ours, reference = encoder(ids, mask), reference_text_tower(encoder, ids, mask)
    assert torch.allclose(ours, reference, atol=1e-4), (ours - reference).abs().max()


@pytest.mark.parametrize("options", [{}, OPTIONS["flava-like"]], ids=["post-LN mean", "pre-LN cls"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-mode-no-dropout"])
def test_padding_invariance(options, training):
    """A text's features do not depend on how much padding its batch needs."""
    torch.manual_seed(1)
    encoder = TextEncoder(TextConfig(**SMALL, **options)).train(training)
    ids, mask = padded_batch()
    with torch.no_grad():
        batched = encoder(ids, mask)
        alone = torch.cat([encoder(ids[i : i + 1, : int(mask[i].sum())]) for i in range(3)])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_sinusoidal_positions_are_the_seeds_formula():
    table = PositionalEncoding(8, 16).pe[0]
    position, index = 5, 2  # even column 2i: sin(pos / 10000^(2i/d))
    assert table[position, 2 * index].item() == pytest.approx(math.sin(position / 10000 ** (2 * index / 8)), abs=1e-6)
    assert table[position, 2 * index + 1].item() == pytest.approx(
        math.cos(position / 10000 ** (2 * index / 8)), abs=1e-6
    )
