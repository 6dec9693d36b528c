"""The CLIP head: projections, normalisation, the clamped temperature."""

import math

import pytest
import torch
import torch.nn.functional as F

import model
from tests.conftest import tiny_config


@pytest.mark.parametrize("bias", [False, True])
def test_projections_and_normalisation_against_plain_math(bias):
    torch.manual_seed(0)
    clip = model.CLIP(tiny_config(projection_bias=bias)).eval()
    assert (clip.image_projection.bias is not None) == bias
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(1000, 30522, (3, 5))
    with torch.no_grad():
        image = F.normalize(
            clip.image_encoder(pixels) @ clip.image_projection.weight.t() + (clip.image_projection.bias if bias else 0),
            dim=-1,
        )
        text = F.normalize(
            clip.text_encoder(ids) @ clip.text_projection.weight.t() + (clip.text_projection.bias if bias else 0),
            dim=-1,
        )
        assert torch.allclose(clip.encode_image(pixels), image, atol=1e-6)
        assert torch.allclose(clip.encode_text(ids), text, atol=1e-6)
        logits_per_image, logits_per_text = clip(pixels, ids)
    assert logits_per_image.shape == (2, 3)
    assert torch.allclose(logits_per_image, math.exp(clip.logit_scale.item()) * image @ text.t(), atol=1e-5)
    assert torch.equal(logits_per_text, logits_per_image.t())


def test_no_projection_needs_equal_widths():
    with pytest.raises(model.ConfigError, match="vision.width 32 must equal text.width 48"):
        tiny_config(embed_dim=None, text={**tiny_config().text.__dict__, "width": 48})
    clip = model.CLIP(tiny_config(embed_dim=None))
    assert isinstance(clip.image_projection, torch.nn.Identity)


@pytest.mark.parametrize("scale, expected", [(math.log(1 / 0.07), 1 / 0.07), (2.0, math.exp(2.0)), (10.0, 100.0)])
def test_temperature_is_clamped_at_100(scale, expected):
    clip = model.CLIP(tiny_config())
    with torch.no_grad():
        clip.logit_scale.fill_(scale)
    assert clip.temperature().item() == pytest.approx(expected, rel=1e-5)


def test_config_json_round_trip_and_refusals(tmp_path):
    config = tiny_config(zero_shot_templates=["a {} emoji"])
    config.save(tmp_path / "config.json")
    assert model.CLIPConfig.load(tmp_path / "config.json") == config
    with pytest.raises(model.ConfigError, match="unknown text field"):
        model.CLIPConfig.from_dict({"text": {"widht": 3}})
    with pytest.raises(model.ConfigError, match="context_length 600"):
        model.CLIPConfig.from_dict({"text": {"context_length": 600}})
    with pytest.raises(model.ConfigError, match="has no"):
        tiny_config(zero_shot_templates=["a photo"])
    with pytest.raises(model.ConfigError, match="resize_mode"):
        model.CLIPConfig.from_dict({"vision": {"resize_mode": "stretch"}})
