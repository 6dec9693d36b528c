"""The README's quick start, run as written: `clip-serve` with no settings serves the bundled
emoji model, and the Twemoji cat from the pinned npm package, among the ten everyday labels,
gets the answer the README prints (labels, probabilities, the model's sha256)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from model.data.emoji_sources import default_cache_dir

from .server import AUTH, ROOT, Server

README = ROOT / "README.md"
SECTION = "### Try the bundled model"


def quickstart() -> tuple[str, dict]:
    """The section's curl command and the JSON answer printed under it."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    answer = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    return command, json.loads(answer)


def test_the_quickstart_command_names_the_pinned_twemoji_cat_and_the_ten_labels():
    command, _ = quickstart()
    assert "clip-serve" in command and "CLIP_CHECKPOINT" not in command
    assert "emoji-datasource-twitter-16.0.0/package/img/twitter/64/1f431.png" in command
    labels = json.loads(re.search(r"labels=(\[.*?\])", command).group(1))
    assert labels == ["cat", "dog", "pizza", "car", "house", "tree", "rocket", "apple", "ball", "book"]


@pytest.fixture(scope="module")
def default_server(twemoji_cat):
    server = Server(None)  # no CLIP_CHECKPOINT: the bundled default
    yield server.wait_ready()
    server.finish()


@pytest.fixture(scope="module")
def twemoji_cat() -> Path:
    cat = default_cache_dir() / "emoji-datasource-twitter-16.0.0" / "package" / "img" / "twitter" / "64" / "1f431.png"
    if not cat.exists():
        pytest.skip(f"the Twemoji cat is not fetched ({cat}): run python -m model.data.emoji fetch (needs npm)")
    return cat


def test_clip_serve_with_no_settings_answers_the_readme_quickstart_as_printed(default_server, twemoji_cat):
    command, printed = quickstart()
    labels = json.loads(re.search(r"labels=(\[.*?\])", command).group(1))
    top_k = int(re.search(r"top_k=(\d+)", command).group(1))
    response = httpx.post(
        f"{default_server.url}/classify",
        headers=AUTH,
        timeout=120,
        files=[("images", ("1f431.png", twemoji_cat.read_bytes(), "image/png"))],
        data={"labels": json.dumps(labels), "top_k": str(top_k)},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == printed["model"] and answer["templates"] == printed["templates"]
    got, shown = answer["results"][0], printed["results"][0]
    assert [s["label"] for s in got["top_k"]] == [s["label"] for s in shown["top_k"]]
    for real, readme in zip(got["scores"], shown["scores"]):
        assert real["label"] == readme["label"]
        assert real["probability"] == pytest.approx(readme["probability"], abs=1e-3)
    assert got["top_k"][0]["label"] == "cat"


def test_the_readmes_python_example_runs_and_names_the_cat(tmp_path, twemoji_cat):
    """The README's library example, run as written from the repository root, with the Twemoji
    cat saved as the cat.png it opens: it prints a probability per label, the cat's the highest."""
    text = README.read_text()
    example = re.search(r"## Use the model from Python\n\n```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "cat.png").write_bytes(twemoji_cat.read_bytes())
    script = example.replace('"model/weights/emoji-clip"', repr(str(ROOT / "model" / "weights" / "emoji-clip")))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    probabilities = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    assert set(probabilities) == {"cat", "dog", "pizza", "rocket"}
    assert max(probabilities, key=probabilities.get) == "cat"
    assert sum(probabilities.values()) == pytest.approx(1, abs=0.01)
