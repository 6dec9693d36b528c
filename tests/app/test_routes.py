"""Embeddings, health, model info, metrics and the offline docs, on the default server."""

from __future__ import annotations

import re

import httpx
import torch

import model

from .server import AUTH, classify, image_bytes

PNG = image_bytes()


def test_embed_text_as_given_and_with_template(server, tiny_checkpoint):
    clip, tokenizer = model.load_pretrained(tiny_checkpoint), model.load_tokenizer(tiny_checkpoint)
    plain = httpx.post(
        f"{server.url}/embed/text", headers=AUTH, json={"texts": ["cat", "a red car"]}, timeout=30
    ).json()
    assert plain["texts"] == ["cat", "a red car"]
    expected = model.zero_shot.encode_texts(clip, tokenizer, ["cat", "a red car"])
    assert torch.allclose(torch.tensor(plain["embeddings"]), expected, atol=1e-5)
    templated = httpx.post(
        f"{server.url}/embed/text", headers=AUTH, json={"texts": ["cat"], "template": "a photo of a {}."}, timeout=30
    )
    assert templated.json()["texts"] == ["a photo of a cat."]
    empty = httpx.post(f"{server.url}/embed/text", headers=AUTH, json={"texts": []}, timeout=30)
    assert empty.status_code == 422 and empty.json()["error"] == "no_texts"


def test_embed_image_normalised_in_upload_order(server, tiny_checkpoint):
    other = image_bytes((10, 10, 240), format="JPEG")
    response = httpx.post(
        f"{server.url}/embed/image",
        headers=AUTH,
        timeout=30,
        files=[("images", ("a.png", PNG)), ("images", ("b.jpg", other))],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filenames"] == ["a.png", "b.jpg"]
    embeddings = torch.tensor(body["embeddings"])
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    clip = model.load_pretrained(tiny_checkpoint)
    pixels = model.preprocess_images([model.load_image(PNG), model.load_image(other)], clip.config)
    with torch.inference_mode():
        assert torch.allclose(embeddings, clip.encode_image(pixels), atol=1e-5)


def test_health_and_model_info(server, tiny_checkpoint):
    assert httpx.get(f"{server.url}/healthz", headers=AUTH).json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz", headers=AUTH).json() == {"status": "ready"}
    info = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()
    assert info["sha256"] == model.weights_sha256(tiny_checkpoint)
    assert (info["device"], info["dtype"], info["vocab_size"]) == ("cpu", "float32", 30522)
    assert info["templates"] == ["a photo of a {}.", "a drawing of a {}."]
    assert info["config"]["vision"]["image_size"] == 32
    assert info["compiled_batch_sizes"] == []  # CLIP_COMPILE is off unless set


def test_metrics_count_requests_errors_images_and_cache(server):
    labels = ["metrics-label-one", "metrics-label-two"]
    before_hits = server.metric("clip_label_cache_hits_total")
    before_misses = server.metric("clip_label_cache_misses_total")
    before_images = server.metric("clip_images_classified_total")
    before_415 = server.metric('clip_requests_total{route="/classify",status="415"}')
    for _ in range(2):
        assert classify(server.url, [("a.png", PNG), ("b.png", PNG)], labels).status_code == 200
    classify(server.url, [("a.png", b"junk")], ["cat"])
    assert server.metric("clip_label_cache_misses_total") == before_misses + 2  # first time only
    assert server.metric("clip_label_cache_hits_total") == before_hits + 2  # the repeat costs nothing
    assert server.metric("clip_images_classified_total") == before_images + 4
    assert server.metric('clip_requests_total{route="/classify",status="415"}') == before_415 + 1
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert 'clip_request_errors_total{code="unsupported_image",route="/classify",status="415"}' in text
    for name in ("clip_request_duration_seconds_bucket", "clip_queue_wait_seconds_bucket", "clip_batch_size_bucket"):
        assert name in text


def test_docs_are_served_from_the_package(server):
    page = httpx.get(f"{server.url}/docs", headers=AUTH).text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page) + re.findall(r"url: '([^']+)'", page)
    assert urls and all(url.startswith("/") for url in urls), urls  # nothing from a CDN
    for url in urls:
        assert httpx.get(f"{server.url}{url}", headers=AUTH).status_code == 200, url
    redoc = httpx.get(f"{server.url}/redoc", headers=AUTH).text
    assert "/docs-assets/redoc.standalone.js" in redoc and "fonts.googleapis" not in redoc


def test_openapi_documents_fields_limits_errors_and_auth(server):
    schema = httpx.get(f"{server.url}/openapi.json", headers=AUTH).json()
    operation = schema["paths"]["/classify"]["post"]
    for status in ("401", "413", "415", "422", "503"):
        assert status in operation["responses"], status
    assert "duplicate_label" in operation["responses"]["422"]["content"]["application/json"]["examples"]
    assert operation["security"] == [{"bearer": []}]
    form = schema["components"]["schemas"][
        operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    ]
    assert "CLIP_MAX_LABELS" in form["properties"]["labels"]["description"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_the_server_keeps_answering_after_more_log_than_a_pipe_holds(server):
    """The test servers' logs go to a pipe the harness must keep reading: uvicorn's access log
    (on under `uvicorn app.main:app`) writes a line per request, and 1,200 lines overflow a 64 KiB
    pipe, after which an unread pipe blocks the server's event loop on its next log line."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(1200):
            assert client.get("/healthz").status_code == 200
