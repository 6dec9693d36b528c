"""The upload byte limit, the API key and CORS (the server's settings: conftest.LIMITS)."""

from __future__ import annotations

import itertools
import re
import select
import socket
import time

import httpx
import pytest

from .server import API_KEY, AUTH, classify, image_bytes

PNG = image_bytes()
MIB = 1024 * 1024
# a valid multipart start, so the body is refused for its size, not its shape
PART = (
    b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="big.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


def post_raw(url: str, headers: list[str], chunks, path="/classify") -> tuple[bytes, int]:
    """Send a request over a plain socket, one chunk at a time, stopping as soon as the server answers.
    Returns (the answer's first bytes, body bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()
        )
        sent = 0
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(30)
        answer = b""
        while not _complete(answer) and (chunk := sock.recv(65536)):
            answer += chunk
        return answer, sent


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    return bool(length) and len(body) >= int(length.group(1))


def test_20_mib_upload_refused_with_413_before_the_body_is_sent(server):
    total = 20 * MIB
    headers = [
        *(f"{k}: {v}" for k, v in AUTH.items()),
        f"Content-Length: {total}",
        "Content-Type: multipart/form-data; boundary=xyz",
    ]
    body = itertools.chain([PART], (b"x" * (64 * 1024) for _ in range(total // (64 * 1024))))
    answer, sent = post_raw(server.url, headers, body)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"upload_too_large" in answer and b"CLIP_MAX_UPLOAD_BYTES" in answer
    assert sent < total // 2


def test_streamed_upload_without_length_cut_off_after_the_limit(server):
    def chunked(size=256 * 1024, count=80):  # 20 MiB in chunked transfer encoding
        yield f"{len(PART):x}\r\n".encode() + PART + b"\r\n"
        for _ in range(count):
            time.sleep(0.01)
            yield f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"

    headers = [
        *(f"{k}: {v}" for k, v in AUTH.items()),
        "Transfer-Encoding: chunked",
        "Content-Type: multipart/form-data; boundary=xyz",
    ]
    answer, sent = post_raw(server.url, headers, chunked())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"upload_too_large" in answer
    assert sent < 10 * MIB


def classify_body(size: int) -> tuple[str, bytes]:
    """A good /classify body (one image, one label) of exactly ``size`` bytes: padded by an extra
    file part, which the route ignores. Returns (its Content-Type, the body)."""

    def build(padding: int) -> tuple[str, bytes]:
        files = [("images", ("a.png", PNG, "image/png")), ("padding", ("pad.bin", b"p" * padding, "text/plain"))]
        request = httpx.Request("POST", "http://x/classify", files=files, data={"labels": ["cat"]})
        return request.headers["content-type"], request.read()

    content_type, body = build(size - len(build(0)[1]))
    assert len(body) == size
    return content_type, body


def pieces(body: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)]


def send_with_length(server, content_type: str, body: bytes) -> bytes:
    headers = [*(f"{k}: {v}" for k, v in AUTH.items()), f"Content-Length: {len(body)}", f"Content-Type: {content_type}"]
    return post_raw(server.url, headers, pieces(body))[0]


def send_chunked(server, content_type: str, body: bytes) -> bytes:
    headers = [*(f"{k}: {v}" for k, v in AUTH.items()), "Transfer-Encoding: chunked", f"Content-Type: {content_type}"]
    chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces(body)]
    return post_raw(server.url, headers, [*chunks, b"0\r\n\r\n"])[0]


@pytest.mark.parametrize("send", [send_with_length, send_chunked], ids=["content-length", "chunked"])
def test_upload_byte_limit_both_sides(server, send):
    """A body of exactly CLIP_MAX_UPLOAD_BYTES (1 MiB) is served; one byte more is a 413, whether
    the size is declared up front or only counted as the chunks stream in."""
    at_limit = send(server, *classify_body(MIB))
    assert at_limit.startswith(b"HTTP/1.1 200"), at_limit[:300]
    over = send(server, *classify_body(MIB + 1))
    assert over.startswith(b"HTTP/1.1 413") and b"upload_too_large" in over, over[:300]


def test_an_oversized_content_length_is_refused_before_any_body_byte(server):
    """Only the headers are sent: the 413 comes from the declared length alone (a server that
    waited for the body would answer 408 once CLIP_BODY_TIMEOUT_S passed)."""
    headers = [
        *(f"{k}: {v}" for k, v in AUTH.items()),
        f"Content-Length: {MIB + 1}",
        "Content-Type: multipart/form-data; boundary=xyz",
    ]
    answer, sent = post_raw(server.url, headers, [])
    assert sent == 0
    assert answer.startswith(b"HTTP/1.1 413") and b"upload_too_large" in answer, answer[:300]


def test_api_key_required_on_protected_routes(server):
    for method, path in [
        ("POST", "/classify"),
        ("POST", "/classify/json"),
        ("POST", "/embed/image"),
        ("POST", "/embed/text"),
        ("GET", "/v1/model"),
        ("GET", "/metrics"),
    ]:
        missing = httpx.request(method, f"{server.url}{path}", timeout=30)
        assert missing.status_code == 401, path
        assert missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = httpx.request(method, f"{server.url}{path}", headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401 and "wrong API key" in wrong.json()["message"]
    assert httpx.get(f"{server.url}/v1/model", headers=AUTH, timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=30).status_code == 200
    assert classify(server.url, [("a.png", PNG)], ["cat"], headers=AUTH).status_code == 200


def test_open_routes_stay_open_with_a_key_set(server):
    for path in [
        "/healthz",
        "/readyz",
        "/",
        "/docs",
        "/openapi.json",
        "/static/demo.js",
        "/docs-assets/swagger-ui.css",
    ]:
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200, path


def test_cors_allows_the_configured_origin_only(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{server.url}/classify", headers={"Origin": "http://example.test", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://example.test"
    other = httpx.options(f"{server.url}/classify", headers={"Origin": "http://evil.test", **preflight})
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "authorization, status",
    [
        (f"Bearer {API_KEY}", 200),
        (f"bearer {API_KEY}", 200),
        (f"BEARER {API_KEY}", 200),  # RFC 7235: the scheme's case
        (f"Bearer {API_KEY}x", 401),
        (f"Bearer {API_KEY[:-1]}", 401),
        (f"Bearer {API_KEY.upper()}", 401),  # the key's exact
        (f"Basic {API_KEY}", 401),
        (API_KEY, 401),
        (f"Bearer{API_KEY}", 401),
        ("Bearer", 401),  # an empty key
    ],
)
def test_the_scheme_name_is_case_insensitive_and_the_key_exact(server, authorization, status):
    response = httpx.get(f"{server.url}/v1/model", headers={"Authorization": authorization}, timeout=30)
    assert response.status_code == status, authorization


def test_template_length_limit_both_sides(server):
    at_limit, over = "a {} " + "x" * 25, "a {} " + "x" * 26  # 30 and 31 characters (the limit is 30)
    assert classify(server.url, [("a.png", PNG)], ["cat"], headers=AUTH, template=at_limit).status_code == 200
    refused = classify(server.url, [("a.png", PNG)], ["cat"], headers=AUTH, template=over)
    assert refused.status_code == 422 and refused.json()["error"] == "template_too_long"
    assert refused.json()["message"] == "template 1 has 31 characters, more than the limit of 30"


def test_label_length_limit_both_sides(server):
    at_limit, over = "a red balloon at sea", "a red balloon at sea!"  # 20 and 21 characters (the limit is 20)
    assert classify(server.url, [("a.png", PNG)], [at_limit], headers=AUTH).status_code == 200
    refused = classify(server.url, [("a.png", PNG)], [over], headers=AUTH)
    assert refused.status_code == 422 and refused.json()["error"] == "label_too_long"
    assert refused.json()["message"] == "label 1 has 21 characters, more than the limit of 20"


def test_text_length_limit_both_sides(server):
    def embed(text):
        return httpx.post(f"{server.url}/embed/text", headers=AUTH, json={"texts": ["a cat", text]}, timeout=30)

    assert embed("y" * 40).status_code == 200  # the limit is 40
    refused = embed("y" * 41)
    assert refused.status_code == 422 and refused.json()["error"] == "text_too_long"
    assert refused.json()["message"] == "text 2 has 41 characters, more than the limit of 40"


def test_a_body_shorter_than_its_content_length_gets_408_after_the_body_timeout(server):
    """The server's CLIP_BODY_TIMEOUT_S is 1.5 s: 10 bytes of a declared 1000, then silence."""
    headers = [
        *(f"{k}: {v}" for k, v in AUTH.items()),
        "Content-Length: 1000",
        "Content-Type: multipart/form-data; boundary=xyz",
    ]
    answer, _ = post_raw(server.url, headers, [PART[:10]])
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"request_timeout" in answer and b"CLIP_BODY_TIMEOUT_S" in answer


def test_a_slow_body_that_keeps_coming_is_not_cut_off(server):
    """Pauses shorter than the timeout, 3 s in all (twice the timeout): the pause is bounded, not the total."""
    image = image_bytes()
    files = {"images": ("a.png", image, "image/png")}
    request = httpx.Request("POST", f"{server.url}/classify", files=files, data={"labels": ["cat"]}, headers=AUTH)
    body = request.read()
    pieces = [body[i : i + len(body) // 6 + 1] for i in range(0, len(body), len(body) // 6 + 1)]

    def slowly():
        for piece in pieces:
            time.sleep(0.5)
            yield piece

    headers = [
        *(f"{k}: {v}" for k, v in AUTH.items()),
        f"Content-Length: {len(body)}",
        f"Content-Type: {request.headers['content-type']}",
    ]
    answer, _ = post_raw(server.url, headers, slowly())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def multipart(closed: bool) -> tuple[list[str], bytes]:
    """A /classify body of one image and two labels, with or without its closing delimiter."""
    request = httpx.Request(
        "POST", "http://x/classify", files={"images": ("a.png", PNG, "image/png")}, data={"labels": ["cat", "dog"]}
    )
    body = request.read()
    boundary = re.search(r"boundary=(\S+)", request.headers["content-type"]).group(1).encode()
    assert body.endswith(b"--" + boundary + b"--\r\n")
    if not closed:  # cut after the last part's value, where a truncated upload ends
        body = body[: body.rindex(b"\r\n--" + boundary + b"--")]
    headers = [
        *(f"{k}: {v}" for k, v in AUTH.items()),
        f"Content-Length: {len(body)}",
        f"Content-Type: {request.headers['content-type']}",
    ]
    return headers, body


def test_a_multipart_body_without_its_closing_delimiter_is_a_400_not_a_label_fewer(server):
    headers, body = multipart(closed=True)
    complete, _ = post_raw(server.url, headers, [body])
    assert complete.startswith(b"HTTP/1.1 200") and complete.count(b'"label"') >= 2, complete[:300]
    headers, body = multipart(closed=False)
    answer, _ = post_raw(server.url, headers, [body])
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"unterminated_multipart" in answer and b"closing delimiter" in answer


def test_request_pixel_limit_both_sides(server):
    """15,000 decoded pixels a request: 100x100 + 1x5,000 is exactly that; one pixel more is a 413."""
    square = ("square.png", image_bytes(size=(100, 100)))
    at_limit = classify(server.url, [square, ("sliver.png", image_bytes(size=(1, 5_000)))], ["cat"])
    assert at_limit.status_code == 200, at_limit.text
    over = classify(server.url, [square, ("sliver.png", image_bytes(size=(1, 5_001)))], ["cat"])
    assert over.status_code == 413, over.text
    body = over.json()
    assert body["error"] == "too_many_pixels"
    assert "more than 15000 pixels in all, the limit (CLIP_MAX_REQUEST_PIXELS)" in body["message"]
