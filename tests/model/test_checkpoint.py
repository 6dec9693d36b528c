"""Checkpoint directory round trip and every load error, each with a clear CheckpointError."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from tests.conftest import TINY_CONFIG, make_checkpoint, tiny_config


@pytest.fixture
def checkpoint(tmp_path, tiny_checkpoint):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


def outputs(clip, tokenizer):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    ids, mask = tokenizer(["a photo of a cat", "dog"])
    with torch.no_grad():
        return clip(pixels, ids, mask)[0]


def test_round_trip_gives_identical_outputs(tmp_path, vocab_path):
    torch.manual_seed(3)
    original = model.CLIP(
        model.CLIPConfig.from_dict(
            {
                "vision": {
                    "image_size": 32,
                    "patch_size": 8,
                    "width": 32,
                    "num_layers": 1,
                    "num_heads": 2,
                    "mlp_dim": 64,
                },
                "text": {
                    "width": 32,
                    "num_layers": 1,
                    "num_heads": 2,
                    "mlp_dim": 64,
                    "max_len": 32,
                    "context_length": 32,
                    "positions": "learned",
                    "embedding_norm": True,
                    "activation": "gelu",
                },
                "embed_dim": 16,
                "projection_bias": True,
            }
        )
    ).eval()
    tokenizer = model.Tokenizer(vocab_path, 32, 30522)
    model.save_pretrained(original, tokenizer, tmp_path / "ckpt")
    loaded, loaded_tokenizer = model.load_pretrained(tmp_path / "ckpt"), model.load_tokenizer(tmp_path / "ckpt")
    assert not loaded.training and loaded.config == original.config
    assert torch.equal(outputs(loaded, loaded_tokenizer), outputs(original, tokenizer))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]


def test_fp16_save_halves_the_file_and_loads_as_float32(tmp_path, vocab_path, tiny_checkpoint):
    clip, tokenizer = model.load_pretrained(tiny_checkpoint), model.load_tokenizer(tiny_checkpoint)
    model.save_pretrained(clip, tokenizer, tmp_path / "half", dtype=torch.float16)
    assert all(t.dtype == torch.float16 for t in load_file(tmp_path / "half" / "model.safetensors").values())
    half = model.load_pretrained(tmp_path / "half")
    assert half.dtype == torch.float32
    assert torch.allclose(outputs(half, tokenizer), outputs(clip, tokenizer), atol=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_and_device_placement(tiny_checkpoint, dtype):
    clip = model.load_pretrained(tiny_checkpoint, device="cpu", dtype=dtype)
    assert {p.dtype for p in clip.parameters()} == {dtype}
    assert {p.device.type for p in clip.parameters()} == {"cpu"}
    if dtype == torch.bfloat16:  # fp16 matmuls are not implemented for every CPU op
        tokenizer = model.load_tokenizer(tiny_checkpoint)
        assert outputs(clip, tokenizer).dtype == dtype


def test_missing_directory_and_files(tmp_path, checkpoint):
    with pytest.raises(model.CheckpointError, match="checkpoint directory not found"):
        model.load_pretrained(tmp_path / "nowhere")
    (checkpoint / "vocab.txt").unlink()
    with pytest.raises(model.CheckpointError, match="lacks vocab.txt"):
        model.load_pretrained(checkpoint)


def test_broken_config_and_weights(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(model.CheckpointError, match="cannot read weights"):
        model.load_pretrained(checkpoint)
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(model.CheckpointError, match="bad config.json"):
        model.check_checkpoint_files(checkpoint)


def edit_weights(checkpoint, edit):
    weights = load_file(checkpoint / "model.safetensors")
    edit(weights)
    save_file(weights, checkpoint / "model.safetensors")


def test_missing_and_unexpected_keys_are_named(checkpoint):
    def edit(weights):
        del weights["image_encoder.cls_token"]
        weights["image_encoder.extra_head.weight"] = torch.zeros(2)

    edit_weights(checkpoint, edit)
    with pytest.raises(
        model.CheckpointError,
        match=r"1 missing key\(s\): image_encoder.cls_token; "
        r"1 unexpected key\(s\): image_encoder.extra_head.weight",
    ):
        model.load_pretrained(checkpoint)


def test_shape_mismatch_is_named(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["embed_dim"] = 20
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        model.CheckpointError, match=r"shape mismatch.*image_projection.weight \(24, 32\) vs \(20, 32\)"
    ):
        model.load_pretrained(checkpoint)


def test_vocabulary_of_wrong_size(checkpoint):
    lines = (checkpoint / "vocab.txt").read_text().splitlines()
    (checkpoint / "vocab.txt").write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(model.TokenizerError, match="has 30512 tokens but the model expects 30522"):
        model.load_pretrained(checkpoint)
    with pytest.raises(model.TokenizerError, match="30512"):
        model.load_tokenizer(checkpoint)


def test_weights_sha256_names_the_weights(tmp_path, vocab_path, tiny_checkpoint):
    other = make_checkpoint(tmp_path / "other", vocab_path, seed=1)
    digest = model.weights_sha256(tiny_checkpoint)
    assert len(digest) == 64 and digest == model.weights_sha256(tiny_checkpoint / "model.safetensors")
    assert digest != model.weights_sha256(other)


@pytest.mark.parametrize(
    "header, words",
    [
        (b"[]", "not a JSON object"),
        (b'{"logit_scale": {"dtype": "F32", "shape": [], "data_offsets": [-4, 0]}}', "do not fit"),
        (b'{"logit_scale": {"dtype": "F32", "shape": "x"}}', "malformed"),
        (b'{"logit_scale": {"dtype": "Q4", "shape": [], "data_offsets": [0, 4]}}', "not a float or int type"),
    ],
)
def test_a_malformed_safetensors_header_is_a_checkpoint_error(tiny_checkpoint, tmp_path, header, words):
    for name in ("config.json", "vocab.txt"):
        (tmp_path / name).write_bytes((tiny_checkpoint / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(model.CheckpointError, match=words):
        model.check_weights_header(tmp_path)


def test_the_shipped_and_saved_checkpoints_pass_the_header_check(tiny_checkpoint):
    model.check_weights_header(tiny_checkpoint)
    model.check_weights_header(Path(__file__).resolve().parents[2] / "model" / "weights" / "emoji-clip")


def test_a_tower_with_the_small_data_options_round_trips(tmp_path, vocab_path):
    """The convolutional stem's and the pooling layer's weights travel in the same format."""
    vision = {**TINY_CONFIG["vision"], "stem": "convolutional", "pool_after": 1}
    saved = make_checkpoint(tmp_path / "ckpt", vocab_path, seed=5, vision=vision)
    torch.manual_seed(5)
    original = model.CLIP(tiny_config(vision=vision)).eval()
    with torch.no_grad():
        original.logit_scale.fill_(2.0)
    loaded = model.load_pretrained(saved)
    assert loaded.config.vision.stem == "convolutional" and loaded.config.vision.pool_after == 1
    assert any("token_pool" in name for name, _ in loaded.named_parameters())
    tokenizer = model.load_tokenizer(saved)
    assert torch.equal(outputs(loaded, tokenizer), outputs(original, tokenizer))
