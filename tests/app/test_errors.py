"""Every bad input gets a clear JSON error with the right status, never a 500 (limits: conftest.LIMITS)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from .server import AUTH, classify, image_bytes

PNG = image_bytes()


def bomb_png(width=8000, height=6000) -> bytes:
    """48 megapixels of one colour: a few KiB on the wire, far over the limit."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


CASES = [
    # (id, images, labels, extra form fields, status, error code, words the message must hold)
    ("no images", None, ["cat"], {}, 422, "invalid_request", "images"),
    ("no labels", [("a.png", PNG)], None, {}, 422, "invalid_request", "labels"),
    ("empty label", [("a.png", PNG)], ["cat", "   "], {}, 422, "empty_label", "label 2"),
    ("duplicate label", [("a.png", PNG)], ["Cat", " cat "], {}, 422, "duplicate_label", "case-insensitively"),
    ("label too long", [("a.png", PNG)], ["x" * 21], {}, 422, "label_too_long", "limit of 20"),
    ("too many labels", [("a.png", PNG)], ["a", "b", "c", "d"], {}, 422, "too_many_labels", "limit of 3"),
    (
        "too many templates",
        [("a.png", PNG)],
        ["cat"],
        {"template": ["{}", "a {}", "the {}"]},
        422,
        "too_many_templates",
        "limit of 2",
    ),
    ("template without braces", [("a.png", PNG)], ["cat"], {"template": "a photo"}, 422, "bad_template", "{}"),
    ("top_k zero", [("a.png", PNG)], ["cat"], {"top_k": "0"}, 422, "bad_top_k", "top_k"),
    ("top_k not a number", [("a.png", PNG)], ["cat"], {"top_k": "many"}, 422, "invalid_request", "top_k"),
    ("labels JSON of numbers", [("a.png", PNG)], ["[1, 2]"], {}, 422, "invalid_labels", "array of strings"),
    ("not an image", [("notes.txt", b"hello, not an image")], ["cat"], {}, 415, "unsupported_image", "notes.txt"),
    ("truncated image", [("cut.png", PNG[: len(PNG) // 2])], ["cat"], {}, 415, "unsupported_image", "cut.png"),
    ("empty file", [("empty.jpg", b"")], ["cat"], {}, 415, "unsupported_image", "empty.jpg"),
    ("decompression bomb", [("bomb.png", bomb_png())], ["cat"], {}, 413, "image_too_large", "bomb.png"),
    (
        "over the pixel limit",
        [("big.png", image_bytes(size=(101, 100)))],
        ["cat"],
        {},
        413,
        "image_too_large",
        "10100 pixels, over the limit of 10000",
    ),
    ("too many images", [(f"{i}.png", PNG) for i in range(3)], ["cat"], {}, 422, "too_many_images", "limit of 2"),
]


@pytest.mark.parametrize(
    "images, labels, fields, status, code, words", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_request_gets_clear_error(server, images, labels, fields, status, code, words):
    files = [("images", (name, data, "application/octet-stream")) for name, data in images or []]
    data = {**({"labels": labels} if labels is not None else {}), **fields}
    if not files:  # still a multipart body, just without files
        files = [("unrelated", ("x.txt", b"x", "text/plain"))]
    response = httpx.post(f"{server.url}/classify", headers=AUTH, files=files, data=data, timeout=60)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert words in body["message"]
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "payload, code",
    [
        ({"images": [], "labels": ["cat"]}, "no_images"),
        ({"images": [{"data": "bm90IGFuIGltYWdl"}], "labels": []}, "no_labels"),
        ({"images": [{"data": "%%%not base64", "filename": "x.png"}], "labels": ["cat"]}, "invalid_base64"),
        ({"images": [{"data": "bm90IGFuIGltYWdl"}], "labels": ["cat"], "templates": ["no braces"]}, "bad_template"),
        ({"labels": ["cat"]}, "invalid_request"),
    ],
)
def test_json_variant_errors(server, payload, code):
    response = httpx.post(f"{server.url}/classify/json", headers=AUTH, json=payload, timeout=60)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == code


def test_unknown_route_is_json_404(server):
    response = httpx.get(f"{server.url}/nope", headers=AUTH, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_bad_request_does_not_harm_a_good_one_sent_with_it(server):
    """A good and a bad image in one request: the request fails clearly; the server then still serves."""
    mixed = classify(server.url, [("good.png", PNG), ("bad.png", b"garbage")], ["cat"])
    assert mixed.status_code == 415 and "bad.png" in mixed.json()["message"]
    assert classify(server.url, [("good.png", PNG)], ["cat"]).status_code == 200


PNG_BASE64 = base64.b64encode(image_bytes()).decode()


@pytest.mark.parametrize(
    "route, payload, names",
    [
        ("/classify/json", {"images": [{"data": PNG_BASE64}], "labels": ["cat", "\ud800"]}, "label 2"),
        (
            "/classify/json",
            {"images": [{"data": PNG_BASE64}], "labels": ["cat"], "templates": ["a {} \udfff"]},
            "template 1",
        ),
        ("/embed/text", {"texts": ["a dog", "a \ud83d cat"]}, "text 2"),
        ("/classify/json", {"images": [{"data": PNG_BASE64, "filename": "\ud800.png"}], "labels": ["cat"]}, "filename"),
    ],
)
def test_a_lone_surrogate_is_a_422_that_says_where(server, route, payload, names):
    """JSON can carry "\\ud800", which decodes to a str that no encoder takes: refused, never a 500."""
    body = json.dumps(payload).encode()  # the escapes stay escapes: this is what a client can send
    response = httpx.post(
        f"{server.url}{route}", content=body, timeout=60, headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_text" and names in response.json()["message"]
    assert "surrogate" in response.json()["message"]


def test_an_image_without_a_filename_is_named_by_its_position(server):
    payload = {"images": [{"data": PNG_BASE64}, {"data": "aGVsbG8="}], "labels": ["cat"]}  # the second is "hello"
    response = httpx.post(f"{server.url}/classify/json", headers=AUTH, json=payload, timeout=60)
    assert response.status_code == 415, response.text
    assert response.json()["message"].startswith("'image 2' is not an image")


@pytest.mark.parametrize(
    "label, found",
    [
        ("\x00", "no tokens at all"),
        ("\u200b", "no tokens at all"),
        ("🐱", "only 1 unknown token(s)"),
        ("🐱 🐶", "only 2 unknown token(s)"),
    ],
)
def test_a_label_the_vocabulary_cannot_spell_is_refused(server, label, found):
    response = classify(server.url, [("a.png", PNG)], ["cat", label], headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "unknown_label"
    assert response.json()["message"].startswith(f"label 2 ({label!r}) has {found}")


def test_a_label_with_one_known_word_among_unknown_ones_is_accepted(server):
    assert classify(server.url, [("a.png", PNG)], ["🐱 cat", "dog"], headers=AUTH).status_code == 200
