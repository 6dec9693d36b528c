"""The Ray Data path of clip-classify (app/bulk_ray.py), for real: a local Ray instance on the CPU
(capped at 2 CPUs), the tiny checkpoint, the same images as the local path: the same lines in the
same order, logits within 1e-5, the same top-k order, the same embeddings and NaN rows.

Ray is an optional extra (pip install ".[ray]"): without it these tests skip, except under CI=true,
where a missing Ray fails the run. GPU actors cannot be tested here (no GPU).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ..ci_skips import running_in_ci
from .bulk_data import TWEMOJI, make_collection, make_tar, photo_jpeg
from .test_bulk import assert_same_scores, clip_classify, labels_and_checkpoint, read_jsonl

RAY_CPUS = 2  # this machine's cores; Ray would otherwise count every core of the host


@pytest.fixture(scope="module")
def ray_instance():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data needs pandas and pyarrow: the ray[data] extra)
    except ImportError as error:
        if running_in_ci():
            pytest.fail(f"CI=true and Ray Data is not installed ({error}): pip install '.[ray]'", pytrace=False)
        pytest.skip(f"Ray Data is not installed ({error}): pip install '.[ray]'")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local instance; keeps its log quiet
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_local_results_for_the_same_images(ray_instance, tmp_path, tiny_checkpoint):
    collection = make_collection(tmp_path / "collection")
    emoji = collection / "emoji"
    archive = make_tar(
        tmp_path / "images.tar",
        {**{f"{code}.png": (emoji / f"{code}.png").read_bytes() for code in TWEMOJI[:2]}, "photo.jpg": photo_jpeg(5)},
    )
    common = [emoji, collection / "photos", archive, *labels_and_checkpoint(tiny_checkpoint), "--quiet"]
    common += ["--batch-size", 4]  # several batches, so the order across blocks and actors is tested
    local_status = clip_classify(*common, "--out", tmp_path / "local.jsonl", "--embeddings", tmp_path / "local.npy")

    ray_status = clip_classify(*common, "--out", tmp_path / "ray.jsonl", "--embeddings", tmp_path / "ray.npy", "--ray")

    assert ray_status == local_status == 1  # broken.jpg
    local, on_ray = read_jsonl(tmp_path / "local.jsonl"), read_jsonl(tmp_path / "ray.jsonl")
    assert len(local) == 13
    assert [(r["path"], r["error"]) for r in on_ray] == [(r["path"], r["error"]) for r in local]
    assert_same_scores(on_ray, local)  # same top-k order, logits and probabilities within 1e-5
    np.testing.assert_allclose(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "local.npy"), atol=1e-5)
