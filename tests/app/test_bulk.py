"""clip-classify's bulk mode (app/bulk.py): directories, globs and .tar archives to JSON lines or
CSV, on real images (Twemoji PNGs from the pinned package, generated JPEGs, broken files), with
--resume after a killed run, embeddings, bad files, the server's limits and a symlink loop. The
reference for the scores is clip-classify's own answer without --out (the POST /classify path)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from app import cli
from app.bulk import BulkJob, LabelSet, run_bulk
from app.bulk_sources import find_sources
from app.settings import Settings

from .bulk_data import LABELS, TWEMOJI, make_collection, make_tar, photo_jpeg

TOP_K = 3


def clip_classify(*arguments) -> int:
    """clip-classify in this process; its exit status."""
    try:
        cli.classify([str(argument) for argument in arguments])
    except SystemExit as exit:
        return exit.code
    return 0


def labels_and_checkpoint(checkpoint) -> list:
    return [*(part for label in LABELS for part in ("--label", label)), "--checkpoint", checkpoint, "--top-k", TOP_K]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def collection(tmp_path):
    return make_collection(tmp_path / "collection")


def expected_paths(root) -> list[str]:
    """Sorted, depth first, image suffixes only, the loop (photos/deeper/loop -> photos) not walked again."""
    emoji = [str(root / "emoji" / f"{code}.png") for code in sorted(TWEMOJI)]
    photos = [str(root / "photos" / name) for name in ("0.jpg", "1.jpg", "broken.jpg", "deeper/2.jpg")]
    return emoji + photos


def assert_same_scores(records: list[dict], reference: list[dict]) -> None:
    for record, expected in zip(records, reference, strict=True):
        assert [s["label"] for s in record["top_k"]] == [s["label"] for s in expected["top_k"]], record["path"]
        for got, want in zip(record["top_k"], expected["top_k"]):
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
            assert got["logit"] == pytest.approx(want["logit"], abs=1e-5)


def test_a_collection_to_jsonl_has_one_line_per_image_with_the_classify_answer(
    collection, tmp_path, tiny_checkpoint, capsys
):
    out = tmp_path / "results.jsonl"
    status = clip_classify(
        collection / "emoji", collection / "photos", "--out", out, *labels_and_checkpoint(tiny_checkpoint)
    )

    assert status == 1  # broken.jpg failed
    records = read_jsonl(out)
    assert [r["path"] for r in records] == expected_paths(collection)
    broken = records[8]
    assert broken["error"] == "unsupported_image" and "broken.jpg" in broken["message"] and broken["top_k"] == []
    good = [r for r in records if r["error"] is None]
    assert len(good) == 9
    reference = cli.classify_files([Path(r["path"]) for r in good], LABELS, None, tiny_checkpoint, TOP_K)["results"]
    assert_same_scores(good, reference)
    assert all(set(score) == {"label", "probability", "logit"} for r in good for score in r["top_k"])
    err = capsys.readouterr().err
    assert "\r" not in err  # no progress bar when stderr is not a terminal
    assert f"10 images in {out}, 1 failed" in err


def test_csv_holds_the_same_results_as_jsonl(collection, tmp_path, tiny_checkpoint):
    common = [collection / "emoji", collection / "photos", *labels_and_checkpoint(tiny_checkpoint), "--quiet"]
    clip_classify(*common, "--out", tmp_path / "r.jsonl")
    clip_classify(*common, "--out", tmp_path / "r.csv")

    rows = list(csv.reader(io.StringIO((tmp_path / "r.csv").read_text())))
    header = ["path", "error", "message"] + [f"{f}_{r}" for r in (1, 2, 3) for f in ("label", "probability", "logit")]
    assert rows[0] == header
    records = read_jsonl(tmp_path / "r.jsonl")
    assert len(rows) == 1 + len(records)
    for row, record in zip(rows[1:], records):
        assert row[0] == record["path"] and row[1] == (record["error"] or "")
        as_csv = [
            {"label": row[i], "probability": float(row[i + 1]), "logit": float(row[i + 2])}
            for i in range(3, len(row), 3)
            if row[i]
        ]
        assert as_csv == record["top_k"]

    # a run killed in the middle of the last row: --resume drops the half row and writes it whole
    whole = (tmp_path / "r.csv").read_bytes()
    (tmp_path / "r.csv").write_bytes(whole[: whole.rindex(b"\n", 0, -1) + 20])
    assert clip_classify(*common, "--out", tmp_path / "r.csv", "--resume") == 1
    resumed = list(csv.reader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert resumed[:-1] == rows[:-1]  # the last one classified alone: floats may differ in the last digit
    last, expected = resumed[-1], rows[-1]
    assert last[:3] == expected[:3] and last[3::3] == expected[3::3]  # path, error, message, labels
    numbers = [float(v) for i, v in enumerate(last) if i > 2 and i % 3]
    assert numbers == pytest.approx([float(v) for i, v in enumerate(expected) if i > 2 and i % 3], abs=1e-5)


def test_a_tar_archive_gives_the_results_of_the_same_files_on_disk(collection, tmp_path, tiny_checkpoint):
    emoji = collection / "emoji"
    members = {f"pack/{code}.png": (emoji / f"{code}.png").read_bytes() for code in TWEMOJI[:3]}
    members["pack/photo.jpg"] = photo_jpeg(0)
    members["pack/readme.txt"] = b"skipped: not an image suffix"
    archive = make_tar(tmp_path / "images.tar", members)
    (tmp_path / "photo.jpg").write_bytes(photo_jpeg(0))
    on_disk = [emoji / f"{code}.png" for code in TWEMOJI[:3]] + [tmp_path / "photo.jpg"]
    out = tmp_path / "r.jsonl"

    status = clip_classify(archive, *on_disk, "--out", out, *labels_and_checkpoint(tiny_checkpoint), "--quiet")

    assert status == 0
    records = read_jsonl(out)
    names = [f"{archive}/{name}" for name in members if name.endswith((".png", ".jpg"))]
    assert [r["path"] for r in records] == names + [str(path) for path in on_disk]
    assert_same_scores(records[:4], records[4:])


def test_a_truncated_archive_reports_the_member_it_cuts_and_itself_and_keeps_the_others(tmp_path, tiny_checkpoint):
    whole = make_tar(tmp_path / "whole.tar", {"a.jpg": photo_jpeg(0), "b.jpg": photo_jpeg(1)})
    data = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: data.rindex(photo_jpeg(1)[:64]) + 1000])  # inside b.jpg's data
    out = tmp_path / "r.jsonl"

    status = clip_classify(cut, "--out", out, *labels_and_checkpoint(tiny_checkpoint), "--quiet")

    assert status == 1
    first, second, archive = read_jsonl(out)
    assert first["path"] == f"{cut}/a.jpg" and first["error"] is None
    assert (
        second["path"] == f"{cut}/b.jpg" and second["error"] == "unreadable_file" and "cut short" in second["message"]
    )
    # and the archive itself, whose listing ends in the middle of a member
    assert archive["path"] == str(cut) and "not a readable tar archive" in archive["message"]


def test_resume_after_a_killed_run_completes_the_output_and_keeps_the_embeddings_aligned(
    collection, tmp_path, tiny_checkpoint, capsys
):
    common = [collection / "emoji", collection / "photos", *labels_and_checkpoint(tiny_checkpoint)]
    clip_classify(*common, "--out", tmp_path / "full.jsonl", "--embeddings", tmp_path / "full.npy", "--quiet")
    out, embeddings = tmp_path / "r.jsonl", tmp_path / "r.npy"
    clip_classify(*common, "--out", out, "--embeddings", embeddings, "--quiet")
    # the run "killed" while writing line 5: four whole lines and half of the fifth; the .npy already
    # has six rows (they are written first) and its header still says ten
    lines = out.read_bytes().split(b"\n")
    out.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][: len(lines[4]) // 2])
    with open(embeddings, "r+b") as file:
        file.truncate(128 + 6 * 24 * 4)  # header + 6 rows of 24 float32
    capsys.readouterr()

    status = clip_classify(*common, "--out", out, "--embeddings", embeddings, "--resume")

    assert status == 1
    assert "6 classified now" in capsys.readouterr().err  # the four done were skipped
    full, resumed = read_jsonl(tmp_path / "full.jsonl"), read_jsonl(out)
    assert [r["path"] for r in resumed] == [r["path"] for r in full]
    assert_same_scores(resumed, full)
    rows, reference = np.load(embeddings), np.load(tmp_path / "full.npy")
    assert rows.shape == reference.shape == (10, 24)
    np.testing.assert_allclose(rows, reference, atol=1e-6)  # NaN in the same place: broken.jpg's row
    assert np.isnan(rows[8]).all() and not np.isnan(np.delete(rows, 8, axis=0)).any()

    # everything done: a second resume classifies nothing and changes nothing
    before = out.read_bytes()
    assert clip_classify(*common, "--out", out, "--embeddings", embeddings, "--resume") == 1
    assert out.read_bytes() == before and np.load(embeddings).shape == (10, 24)


def test_an_output_is_never_overwritten_or_resumed_from_something_else(collection, tmp_path, tiny_checkpoint, capsys):
    common = [collection / "emoji", *labels_and_checkpoint(tiny_checkpoint), "--quiet"]
    out = tmp_path / "r.jsonl"
    assert clip_classify(*common, "--out", out) == 0
    before = out.read_bytes()

    assert clip_classify(*common, "--out", out) == 2
    assert "exists: pass --resume" in capsys.readouterr().err and out.read_bytes() == before
    assert clip_classify(*common, "--out", out, "--embeddings", tmp_path / "new.npy", "--resume") == 2
    assert "could not line up" in capsys.readouterr().err
    damaged = before.replace(b'"path"', b'"PATH"', 1)  # a complete first line that is not a result
    out.write_bytes(damaged)
    assert clip_classify(*common, "--out", out, "--resume") == 2
    assert "line 1" in capsys.readouterr().err and out.read_bytes() == damaged


def test_the_servers_limits_apply_to_each_image_and_the_run_goes_on(collection, tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("CLIP_MAX_IMAGE_PIXELS", "10000")  # 64x64 emoji pass, 640x480 photos do not
    common = [collection / "emoji", collection / "photos", *labels_and_checkpoint(tiny_checkpoint), "--quiet"]
    assert clip_classify(*common, "--out", tmp_path / "pixels.jsonl") == 1
    errors = {r["path"].rsplit("/", 1)[1]: r["error"] for r in read_jsonl(tmp_path / "pixels.jsonl")}
    assert errors == {
        **{f"{c}.png": None for c in TWEMOJI},
        **dict.fromkeys(["0.jpg", "1.jpg", "2.jpg"], "image_too_large"),
        "broken.jpg": "unsupported_image",
    }

    monkeypatch.setenv("CLIP_MAX_IMAGE_PIXELS", "40000000")
    monkeypatch.setenv("CLIP_MAX_UPLOAD_BYTES", "10000")  # emoji PNGs are smaller, the JPEGs larger
    assert clip_classify(*common, "--out", tmp_path / "bytes.jsonl") == 1
    records = read_jsonl(tmp_path / "bytes.jsonl")
    too_large = [r for r in records if r["error"] == "image_too_large"]
    assert len(too_large) == 3 and all("CLIP_MAX_UPLOAD_BYTES" in r["message"] for r in too_large)


def test_a_symlink_loop_is_walked_once_and_each_image_listed_once(collection):
    (collection / "again").symlink_to(collection / "photos")  # the same folder by a second name

    names = [source.name for source in find_sources([str(collection), str(collection / "photos")])]

    assert len(names) == len(set(names)) == 10
    assert names[:4] == [str(collection / "again" / n) for n in ("0.jpg", "1.jpg", "broken.jpg", "deeper/2.jpg")]


def test_globs_name_files_and_a_glob_that_matches_nothing_is_a_usage_error(
    collection, tmp_path, tiny_checkpoint, capsys
):
    common = [*labels_and_checkpoint(tiny_checkpoint), "--quiet"]
    assert clip_classify(f"{collection}/**/*.jpg", "--out", tmp_path / "r.jsonl", *common) == 1
    assert [r["path"] for r in read_jsonl(tmp_path / "r.jsonl")] == expected_paths(collection)[6:]
    assert (
        clip_classify(f"{collection}/em*", "--out", tmp_path / "folder.jsonl", *common) == 0
    )  # a matched folder is walked
    assert [r["path"] for r in read_jsonl(tmp_path / "folder.jsonl")] == expected_paths(collection)[:6]
    assert clip_classify(f"{collection}/*.webp", "--out", tmp_path / "none.jsonl", *common) == 2
    assert "matches no file" in capsys.readouterr().err and not (tmp_path / "none.jsonl").exists()


def test_batch_size_and_decode_workers_change_nothing_in_the_output(collection, tmp_path, tiny_checkpoint):
    common = [collection / "emoji", collection / "photos", *labels_and_checkpoint(tiny_checkpoint), "--quiet"]
    clip_classify(*common, "--out", tmp_path / "one.jsonl", "--batch-size", 1, "--decode-workers", 1)
    clip_classify(*common, "--out", tmp_path / "many.jsonl", "--batch-size", 4, "--decode-workers", 3)
    one, many = read_jsonl(tmp_path / "one.jsonl"), read_jsonl(tmp_path / "many.jsonl")
    assert [r["path"] for r in one] == [r["path"] for r in many] == expected_paths(collection)
    assert_same_scores(one, many)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False], ids=["progress", "quiet"])
def test_a_progress_bar_with_images_per_second_on_a_terminal(
    collection, tmp_path, tiny_checkpoint, monkeypatch, progress
):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    settings = Settings(checkpoint=tiny_checkpoint)
    job = BulkJob(
        (str(collection / "emoji"),), tmp_path / "r.jsonl", LabelSet.checked(LABELS, None, 3, settings), settings
    )

    run_bulk(job, progress=progress)

    shown = terminal.getvalue()
    assert ("6/6" in shown and "img/s" in shown) if progress else shown == ""


def test_without_out_a_directory_or_bulk_option_is_refused_with_a_hint(collection, tiny_checkpoint, capsys):
    assert clip_classify(collection / "emoji", *labels_and_checkpoint(tiny_checkpoint)) == 2
    assert "need --out results.jsonl" in capsys.readouterr().err
    assert clip_classify(collection / "emoji" / "1f431.png", "--resume", *labels_and_checkpoint(tiny_checkpoint)) == 2
    assert "--resume needs --out" in capsys.readouterr().err
