"""The seed's own code (../shared/seed/seed_clip.py) against ours, weight for weight."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model
from model.convert.__main__ import main as convert_main
from model.convert.seed import config_from_seed_kwargs

SEED_DIR = Path(__file__).resolve().parents[3] / "shared" / "seed"
sys.path.insert(0, str(SEED_DIR))
seed_clip = pytest.importorskip("seed_clip", reason=f"the seed's code is not at {SEED_DIR}")

SEED_KWARGS = dict(
    image_size=32,
    patch_size=8,
    embed_dim=64,
    num_heads=4,
    num_layers=2,
    mlp_hidden_dim=128,
    d_model=64,
    text_num_layers=2,
    text_num_heads=4,
    text_d_ff=128,
    max_len=40,
)


@pytest.fixture(scope="module")
def seed_model():
    torch.manual_seed(0)
    seed = seed_clip.CLIP(**SEED_KWARGS).eval()
    with torch.no_grad():
        seed.logit_scale.fill_(3.0)
    return seed


def seed_text_as_intended(seed, ids):
    """The seed's text tower with the axes nn.TransformerEncoder expects (tokens attend to tokens)."""
    encoder = seed.text_encoder
    h = encoder.positional_encoding(encoder.embeddings(ids))
    return encoder.transformer_encoder(h.transpose(0, 1)).transpose(0, 1).mean(dim=1)


def test_seed_state_dict_loads_strictly_and_matches(seed_model):
    ours = model.CLIP(config_from_seed_kwargs(SEED_KWARGS)).eval()
    ours.load_state_dict(seed_model.state_dict(), strict=True)
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(1000, 30522, (3, 9))
    with torch.no_grad():
        assert torch.allclose(ours.image_encoder(pixels), seed_model.image_encoder(pixels), atol=1e-5)
        assert torch.allclose(ours.text_encoder(ids), seed_text_as_intended(seed_model, ids), atol=1e-5)
        reference = (
            seed_model.logit_scale.exp()
            * F.normalize(seed_model.image_encoder(pixels), dim=-1)
            @ F.normalize(seed_text_as_intended(seed_model, ids), dim=-1).t()
        )
        logits_per_image, logits_per_text = ours(pixels, ids)
    assert torch.allclose(logits_per_image, reference, atol=1e-4)
    assert torch.equal(logits_per_text, logits_per_image.t())


def test_seed_as_written_mixes_texts_of_a_batch_and_ours_does_not(seed_model):
    """The defect this library fixes: in the seed a text's embedding depends on its batch."""
    ours = model.CLIP(config_from_seed_kwargs(SEED_KWARGS)).eval()
    ours.load_state_dict(seed_model.state_dict(), strict=True)
    ids = torch.randint(1000, 30522, (2, 6))
    with torch.no_grad():
        seed_alone, seed_batched = seed_model.text_encoder(ids[:1]), seed_model.text_encoder(ids)[:1]
        ours_alone, ours_batched = ours.text_encoder(ids[:1]), ours.text_encoder(ids)[:1]
    assert not torch.allclose(seed_alone, seed_batched, atol=1e-3)
    assert torch.allclose(ours_alone, ours_batched, atol=1e-5)


def test_convert_seed_cli(seed_model, tmp_path, vocab_path):
    torch.save(seed_model.state_dict(), tmp_path / "seed.pt")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.convert",
            "seed",
            str(tmp_path / "seed.pt"),
            str(tmp_path / "out"),
            "--seed-kwargs",
            json.dumps(SEED_KWARGS),
            "--vocab",
            str(vocab_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    clip = model.load_pretrained(tmp_path / "out")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            clip.encode_image(pixels), F.normalize(seed_model.image_encoder(pixels), dim=-1), atol=1e-5
        )
    assert clip.logit_scale.item() == pytest.approx(3.0)


def test_convert_seed_refuses_wrong_kwargs(seed_model, tmp_path, vocab_path, capsys):
    torch.save(seed_model.state_dict(), tmp_path / "seed.pt")
    wrong = {**SEED_KWARGS, "embed_dim": 96, "d_model": 96}
    base = ["seed", str(tmp_path / "seed.pt"), str(tmp_path / "out"), "--vocab", str(vocab_path), "--seed-kwargs"]
    assert convert_main(base + [json.dumps(wrong)]) == 1
    assert "shape mismatch" in capsys.readouterr().err
    assert convert_main(base + ['{"colour": 1}']) == 1
    assert "unknown seed keyword argument(s): colour" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()
