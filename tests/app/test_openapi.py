"""The OpenAPI schema tells the truth about the real server: its limits are the server's settings,
bearer auth appears only where a key is set, bodies that do not parse are a documented 400, and
schemathesis, generating requests from the schema, finds no 5xx and no answer the schema does not
describe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import LIMITS
from .server import API_KEY, AUTH, ROOT, Server

SCHEMATHESIS = Path(sys.executable).with_name("st")  # the dev extra's CLI, beside this venv's python
# Every check runs. A schema cannot say "the bytes of a decodable image", "a label the vocabulary
# knows" or "no duplicates ignoring case", so schema-valid requests may rightly get a 415 or 422:
# positive_data_acceptance lets those statuses pass, and schemathesis_hooks.py's own check then
# allows exactly those error codes and no other.
SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "415", "422"]
"""
MAX_EXAMPLES = 8  # per operation and phase: enough to cover every operation, fast on 2 shared cores


def schema_of(server) -> dict:
    return httpx.get(f"{server.url}/openapi.json", timeout=30).json()


def body_schema(schema: dict, path: str, media: str) -> dict:
    reference = schema["paths"][path]["post"]["requestBody"]["content"][media]["schema"]["$ref"]
    return schema["components"]["schemas"][reference.rsplit("/", 1)[-1]]["properties"]


def test_request_schemas_carry_the_servers_limits(server):
    schema = schema_of(server)
    for path, media, templates in [
        ("/classify", "multipart/form-data", "template"),
        ("/classify/json", "application/json", "templates"),
    ]:
        body = body_schema(schema, path, media)
        assert (body["images"]["minItems"], body["images"]["maxItems"]) == (1, LIMITS["max_images"])
        labels = body["labels"]
        assert (labels["minItems"], labels["maxItems"]) == (1, LIMITS["max_labels"])
        assert (labels["items"]["minLength"], labels["items"]["maxLength"]) == (1, LIMITS["max_label_chars"])
        # optional: a JSON body's may be null; a form field is absent or a string, never null
        listed = next(branch for branch in body[templates].get("anyOf", [body[templates]]) if branch["type"] == "array")
        assert ("anyOf" in body[templates]) == (media == "application/json")
        assert listed["maxItems"] == LIMITS["max_templates"]
        assert listed["items"]["maxLength"] == LIMITS["max_template_chars"]
        assert body["top_k"]["minimum"] == 1
    assert body_schema(schema, "/embed/image", "multipart/form-data")["images"]["maxItems"] == LIMITS["max_images"]
    texts = body_schema(schema, "/embed/text", "application/json")["texts"]
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 64, LIMITS["max_text_chars"])


PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
WORDS = ["cat", "dog", "pizza", "car", "tree", "house", "ball", "book"]


@pytest.mark.parametrize(
    ("labels_for", "error"),
    [
        (lambda limits: ["a" * limits["items"]["maxLength"]], None),
        (lambda limits: ["a" * (limits["items"]["maxLength"] + 1)], "label_too_long"),
        (lambda limits: WORDS[: limits["maxItems"]], None),
        (lambda limits: WORDS[: limits["maxItems"] + 1], "too_many_labels"),
        (lambda limits: WORDS[: limits["minItems"] - 1], "no_labels"),
    ],
    ids=["at-maxLength", "over-maxLength", "at-maxItems", "over-maxItems", "under-minItems"],
)
def test_the_server_keeps_the_label_limits_its_schema_declares(server, labels_for, error):
    limits = body_schema(schema_of(server), "/classify/json", "application/json")["labels"]
    body = {"images": [{"data": PIXEL}], "labels": labels_for(limits)}
    answer = httpx.post(f"{server.url}/classify/json", headers=AUTH, json=body, timeout=60)
    assert (answer.status_code, answer.json().get("error")) == ((200, None) if error is None else (422, error))


@pytest.fixture(scope="module")
def server_without_key(tiny_checkpoint):
    """Its own server: the session's keyless one (batching_server) is stopped by a drain test."""
    keyless = Server(tiny_checkpoint).wait_ready()
    yield keyless
    keyless.finish()


def test_bearer_auth_is_declared_only_where_a_key_is_set(server, server_without_key):
    keyed, open_ = schema_of(server), schema_of(server_without_key)
    assert keyed["paths"]["/classify"]["post"]["security"] == [{"bearer": []}]
    assert "401" in keyed["paths"]["/classify"]["post"]["responses"]
    assert "securitySchemes" not in open_.get("components", {})
    for operations in open_["paths"].values():
        for operation in operations.values():
            assert "security" not in operation and "401" not in operation["responses"]


@pytest.mark.parametrize(
    ("path", "content_type", "body", "problem"),
    [
        ("/classify/json", "application/json", b'{"labels": ["cat"', "is not valid JSON"),
        ("/embed/text", "application/json", b"not json", "is not valid JSON"),
        ("/classify", "multipart/form-data; boundary=xyz", b"--xyz\r\nno headers\r\n--xyz--\r\n", "parse as a form"),
    ],
    ids=["json-cut-short", "json-garbage", "multipart-garbage"],
)
def test_an_unparseable_body_is_a_documented_400(server, path, content_type, body, problem):
    answer = httpx.post(f"{server.url}{path}", headers={**AUTH, "Content-Type": content_type}, content=body, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"] == "unparseable_body" and problem in answer.json()["message"]
    documented = schema_of(server)["paths"][path]["post"]["responses"]["400"]
    assert "unparseable_body" in documented["content"]["application/json"]["examples"]


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--generation-deterministic",  # the same cases every run: no seed, no example database
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--no-color",
        ],
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.app.schemathesis_hooks", "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,  # its cache folder (.schemathesis) lands there, not in the work tree
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(run.stdout)  # the counts, for whoever reads the log (-s)
    assert run.returncode == 0, run.stdout + run.stderr
    tested = re.search(r"Tested: (\d+)", run.stdout)
    generated = re.search(r"(\d+) generated", run.stdout)
    assert tested and int(tested.group(1)) == len([op for ops in schema_of(server)["paths"].values() for op in ops])
    assert generated and int(generated.group(1)) >= 100, run.stdout
