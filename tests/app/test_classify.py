"""POST /classify and /classify/json against a real server and a tiny real checkpoint."""

from __future__ import annotations

import base64
import io
import re

import httpx
import pytest
import torch
from PIL import Image

import model

from .server import AUTH, classify, image_bytes

RED, BLUE = image_bytes((200, 30, 30)), image_bytes((20, 40, 210), format="JPEG")


def reference_logits(checkpoint, images: list[bytes], labels, templates) -> torch.Tensor:
    """The same classification straight through the model library, no server."""
    clip, tokenizer = model.load_pretrained(checkpoint), model.load_tokenizer(checkpoint)
    pixels = model.preprocess_images([model.load_image(data) for data in images], clip.config)
    classes = model.zero_shot.label_embeddings(clip, tokenizer, labels, templates)
    with torch.inference_mode():
        return clip.similarity_logits(clip.encode_image(pixels), classes)


def test_classify_answers_per_image_in_label_order(server, tiny_checkpoint):
    response = classify(
        server.url,
        [("red.png", RED), ("blue.jpg", BLUE)],
        ["cat", "dog", "pizza"],
        headers={**AUTH, "X-Request-ID": "req-42"},
        top_k=2,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-42"
    body = response.json()
    assert [r["filename"] for r in body["results"]] == ["red.png", "blue.jpg"]
    assert body["model"] == {"name": tiny_checkpoint.name, "sha256": model.weights_sha256(tiny_checkpoint)[:12]}
    assert body["templates"] == ["a photo of a {}.", "a drawing of a {}."]  # the checkpoint's own
    expected = reference_logits(tiny_checkpoint, [RED, BLUE], ["cat", "dog", "pizza"], body["templates"])
    for result, logits in zip(body["results"], expected):
        assert [s["label"] for s in result["scores"]] == ["cat", "dog", "pizza"]
        got = torch.tensor([s["logit"] for s in result["scores"]])
        assert torch.allclose(got, logits, atol=1e-5)
        assert sum(s["probability"] for s in result["scores"]) == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(torch.tensor([s["probability"] for s in result["scores"]]), logits.softmax(-1), atol=1e-6)
        top = sorted(result["scores"], key=lambda s: -s["probability"])[:2]
        assert result["top_k"] == top


def test_generated_request_id_and_top_k_capped(server):
    response = classify(server.url, [("red.png", RED)], ["cat", "dog"], top_k=10)
    assert response.status_code == 200
    assert len(response.headers["x-request-id"]) >= 16
    assert len(response.json()["results"][0]["top_k"]) == 2


def test_json_array_labels_and_templates_ensembled(server, tiny_checkpoint):
    templates = ["a photo of a {}.", "an emoji of a {}."]
    response = classify(server.url, [("red.png", RED)], ['["cat", "dog"]'], template=templates)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["templates"] == templates
    assert [s["label"] for s in body["results"][0]["scores"]] == ["cat", "dog"]
    expected = reference_logits(tiny_checkpoint, [RED], ["cat", "dog"], templates)[0]
    assert torch.allclose(torch.tensor([s["logit"] for s in body["results"][0]["scores"]]), expected, atol=1e-5)


def test_json_variant_matches_multipart(server):
    multipart = classify(server.url, [("red.png", RED), ("blue.jpg", BLUE)], ["cat", "dog"]).json()
    payload = {
        "images": [
            {"data": base64.b64encode(RED).decode(), "filename": "red.png"},
            {"data": "data:image/jpeg;base64," + base64.b64encode(BLUE).decode(), "filename": "blue.jpg"},
        ],
        "labels": ["cat", "dog"],
    }
    answer = httpx.post(f"{server.url}/classify/json", headers=AUTH, json=payload, timeout=60)
    assert answer.status_code == 200, answer.text
    for a, b in zip(answer.json()["results"], multipart["results"]):
        assert a["filename"] == b["filename"]
        for x, y in zip(a["scores"], b["scores"]):
            assert x["logit"] == pytest.approx(y["logit"], abs=1e-5)


def test_logit_of_a_label_does_not_depend_on_the_other_labels(server):
    alone = classify(server.url, [("red.png", RED)], ["hot air balloon"]).json()
    among = classify(server.url, [("red.png", RED)], ["cat", "hot air balloon", "long label words"]).json()
    logit_alone = alone["results"][0]["scores"][0]["logit"]
    logit_among = among["results"][0]["scores"][1]["logit"]
    assert abs(logit_alone - logit_among) < 1e-5
    assert alone["results"][0]["scores"][0]["probability"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "format, extra",
    [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("PNG", {"mode": "RGBA"})],
)
def test_image_formats(server, format, extra):
    image = Image.new(extra.get("mode", "RGB"), (40, 30), (10, 200, 90) + ((128,) if extra else ()))
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    response = classify(server.url, [(f"x.{format.lower()}", buffer.getvalue())], ["cat", "dog"])
    assert response.status_code == 200, response.text


def test_gif_gives_its_first_frame(server):
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    first = io.BytesIO()
    frames[0].save(first, format="GIF")
    animated = classify(server.url, [("a.gif", buffer.getvalue())], ["cat", "dog"]).json()
    still = classify(server.url, [("b.gif", first.getvalue())], ["cat", "dog"]).json()
    assert animated["results"][0]["scores"] == still["results"][0]["scores"]


def test_inner_whitespace_of_a_label_is_collapsed(server):
    """Runs of spaces or tabs inside a label are one space: echoed so, measured so (21 characters
    as sent, 20 once collapsed: the limit is 20), and compared so for duplicates."""
    response = classify(server.url, [("red.png", RED)], ["hot  dog", "a red\t balloon at sea"])
    assert response.status_code == 200, response.text
    assert [s["label"] for s in response.json()["results"][0]["scores"]] == ["hot dog", "a red balloon at sea"]
    duplicate = classify(server.url, [("red.png", RED)], ["hot dog", "hot \t dog"])
    assert duplicate.status_code == 422 and duplicate.json()["error"] == "duplicate_label"


@pytest.mark.parametrize(
    "sent, echoed",
    [
        ("r" * 128, True),  # the longest accepted
        ("r" * 129, False),
        ("r" * 200, False),
        ("has spaces", False),
        ("a.b_c:d-1", True),
        ("semi;colon", False),
    ],
)
def test_a_request_id_is_echoed_only_when_sane(server, sent, echoed):
    """Echoed: 1 to 128 of letters, digits and . _ : -; anything else is replaced by a fresh id."""
    response = classify(server.url, [("red.png", RED)], ["cat"], headers={**AUTH, "X-Request-ID": sent})
    assert response.status_code == 200, response.text
    if echoed:
        assert response.headers["x-request-id"] == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), response.headers["x-request-id"]
