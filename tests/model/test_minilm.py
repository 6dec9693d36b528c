"""The MiniLM text tower reproduces all-MiniLM-L6-v2's own sentence embeddings."""

import pytest
import torch
import torch.nn.functional as F

import model
from model.convert.__main__ import main as convert_main
from model.convert.minilm import package_dir

SENTENCES = [
    "A cat sits on the mat.",
    "a photo of a dog",
    "Rockets fly to the moon!",
    "naïve café, déjà vu",
    "x",
    "the quick brown fox jumps over the lazy dog " * 3,
]


@pytest.fixture(scope="module")
def minilm_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "ckpt"
    assert convert_main(["minilm", str(out), "--vision-config", '{"image_size": 32, "num_layers": 1}']) == 0
    return out


def test_text_tower_equals_sentence_transformers(minilm_checkpoint):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference_model = sentence_transformers.SentenceTransformer(str(package_dir()), device="cpu")
    reference = torch.from_numpy(reference_model.encode(SENTENCES, convert_to_numpy=True))
    clip, tokenizer = model.load_pretrained(minilm_checkpoint), model.load_tokenizer(minilm_checkpoint)
    ids, mask = tokenizer(SENTENCES)  # one padded batch: padding must not matter
    with torch.no_grad():
        ours = clip.text_encoder(ids, mask)
    cosine = F.cosine_similarity(ours, reference)
    assert cosine.min().item() >= 0.9999, cosine


def test_minilm_checkpoint_config(minilm_checkpoint):
    config = model.load_config(minilm_checkpoint)
    assert (config.text.width, config.text.activation, config.text.layer_norm_eps) == (384, "gelu", 1e-12)
    assert config.vision.image_size == 32 and config.embed_dim == 384
