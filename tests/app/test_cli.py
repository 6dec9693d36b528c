"""clip-classify (local, no server) and the console-script entry points."""

from __future__ import annotations

import json

import pytest
import tomllib

from app import cli
from app.settings import Settings

from .server import ROOT, image_bytes


def test_entry_points_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["clip-serve"] == "app.cli:serve" and scripts["clip-classify"] == "app.cli:classify"
    assert callable(cli.serve) and callable(cli.classify)


def test_clip_classify_json(tmp_path, tiny_checkpoint, capsys):
    paths = []
    for i, color in enumerate(((200, 30, 30), (20, 40, 210))):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(image_bytes(color))
    cli.classify(
        [
            *map(str, paths),
            "--label",
            "cat",
            "--label",
            "dog",
            "--checkpoint",
            str(tiny_checkpoint),
            "--template",
            "a photo of a {}.",
            "--json",
        ]
    )
    body = json.loads(capsys.readouterr().out)
    assert [r["filename"] for r in body["results"]] == [str(p) for p in paths]
    assert body["templates"] == ["a photo of a {}."]
    for result in body["results"]:
        assert sum(s["probability"] for s in result["scores"]) == pytest.approx(1.0, abs=1e-6)

    cli.classify([str(paths[0]), "--label", "cat", "--label", "dog", "--checkpoint", str(tiny_checkpoint)])
    text = capsys.readouterr().out
    assert text.startswith(str(paths[0])) and "%  cat" in text and "%  dog" in text


def test_clip_classify_bad_input_is_one_line(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "a.txt").write_text("not an image")
    with pytest.raises(SystemExit) as exit:
        cli.classify([str(tmp_path / "a.txt"), "--label", "cat", "--checkpoint", str(tiny_checkpoint)])
    assert exit.value.code == 2
    assert "a.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.classify([str(tmp_path / "a.txt"), "--label", "cat", "--checkpoint", str(tmp_path / "none")])
    assert "CLIP_CHECKPOINT" in capsys.readouterr().err


def test_settings_read_from_clip_environment(monkeypatch):
    monkeypatch.setenv("CLIP_MAX_BATCH", "7")
    monkeypatch.setenv("CLIP_CORS_ORIGINS", "http://a.test, http://b.test")
    monkeypatch.setenv("CLIP_API_KEY", "s3cret")
    settings = Settings()
    assert settings.max_batch == 7
    assert settings.cors_origin_list == ["http://a.test", "http://b.test"]
    assert settings.api_key.get_secret_value() == "s3cret" and "s3cret" not in repr(settings)


def test_clip_serve_gets_uvicorns_fast_protocol_and_event_loop():
    """uvicorn's "auto" picks httptools and uvloop when they are installed (they are dependencies):
    h11 and asyncio's own loop cost a server like this a large share of its time per request."""
    from uvicorn.config import Config

    config = Config("app.main:app")
    config.load()
    assert config.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"
    loop = config.get_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
