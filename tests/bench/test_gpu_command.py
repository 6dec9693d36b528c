"""bench/gpu.sh --dry-run: every step of the GPU command runs on the CPU with tiny sizes, so the
command cannot rot between the rare calls on a lent GPU host (bench/gpu/run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STEPS = ["environment", "training", "cuda_tests", "tower", "engine", "http"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu-dry-run")
    completed = subprocess.run(
        ["bash", "bench/gpu.sh", str(out), "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return out


def test_every_step_runs_and_is_reported(dry_run):
    results = json.loads((dry_run / "results.json").read_text())
    assert list(results["steps"]) == STEPS
    assert {name: record["status"] for name, record in results["steps"].items()} == dict.fromkeys(STEPS, "ok")
    summary = (dry_run / "summary.md").read_text()
    assert all(f"| {name} | ok |" in summary for name in STEPS)
    log = (dry_run / "log.txt").read_text()
    assert all(f"== {name}: start" in log and f"== {name}: ok after" in log for name in STEPS)


def test_what_comes_back_fits_the_hosts_limits(dry_run):
    files = sorted(path.name for path in dry_run.iterdir())
    assert all(path.is_file() for path in dry_run.iterdir())  # nothing nested
    assert len(files) <= 8 and all(path.stat().st_size <= 16 * 2**20 for path in dry_run.iterdir())
    assert {"results.json", "summary.md", "log.txt", "trained.json", "history.json"} <= set(files)
    assert any(name.startswith("trained-") and name.endswith(".pt") for name in files)


def test_the_cuda_tests_ran_on_the_cpu_stand_in_and_passed(dry_run):
    figures = json.loads((dry_run / "results.json").read_text())["steps"]["cuda_tests"]["figures"]
    assert figures["passed"] > 0 and figures["failed"] == 0


def test_the_training_step_trained_the_gpu_recipes_tower(dry_run):
    figures = json.loads((dry_run / "results.json").read_text())["steps"]["training"]["figures"]
    trained = json.loads((dry_run / "trained.json").read_text())
    gpu_recipe = json.loads((REPO / "model" / "weights" / "emoji-clip" / "recipe-gpu.json").read_text())
    assert trained["recipe"]["vision"] == gpu_recipe["vision"]
    assert figures["steps"] >= 1 and figures["final"]["val_top1"] is not None


def test_the_engine_step_measures_the_diagnoses_of_the_predecoded_path(dry_run):
    figures = json.loads((dry_run / "results.json").read_text())["steps"]["engine"]["figures"]
    for key in ("ceiling", "predecoded", "predecoded_one_in_flight", "predecoded_switch", "predecoded_graphs"):
        assert figures["images_per_s"][key] > 0, key
    assert figures["setup"]["batches_in_flight"] == 2 and figures["predecoded_one_in_flight"]["batches_in_flight"] == 1
    assert figures["predecoded_switch"]["switch_interval_s"] == 1e-4
    graphs = figures["predecoded_graphs"]
    assert graphs["compile_options"] == {"backend": "eager"}  # the dry run: the path, no C++ build
    assert graphs["compile_s"] > 0 and graphs["ratio_to_own_ceiling"] > 0
    assert figures["ceiling_graphs"]["images_per_s"] > 0


def test_a_step_that_fails_is_reported_and_the_others_still_run(tmp_path):
    """A planted failure: the training step without its bundle (no --dry-run: the real step on the CPU)."""
    completed = subprocess.run(
        ["bash", "bench/gpu.sh", str(tmp_path), "--only", "environment", "training"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": "", "CLIP_GPU_CARRY": str(tmp_path / "no-carry")},
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert completed.returncode == 1
    assert results["steps"]["environment"]["status"] == "ok"
    assert results["steps"]["training"]["status"] == "failed"
    assert "bundle.npz not found" in (tmp_path / "log.txt").read_text()


def test_a_step_killed_at_its_cap_is_reported_with_what_it_had_measured(tmp_path, monkeypatch):
    """run.py's own step runner on a step that writes a figure, then hangs (ignoring SIGTERM)."""
    monkeypatch.syspath_prepend(str(REPO / "bench" / "gpu"))
    import run

    hanging = tmp_path / "hanging.py"
    hanging.write_text(
        "import json, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[sys.argv.index('--result') + 1], 'w').write(json.dumps({'measured': 1}))\n"
        "print('measured one figure', flush=True)\n"
        "time.sleep(600)\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    context = run.Context(out, tmp_path, dry_run=True, log=run.Log(out / "log.txt"), caps={"hanging": 2})
    record = run.run_step(run.Step("hanging", 600, str(hanging), "writes a figure, then hangs"), context)
    assert record["status"] == "timed out" and record["exit_code"] is None and record["cap_seconds"] == 2
    assert record["figures"] == {"measured": 1}
    assert 2 <= record["seconds"] < 2 + run.KILL_GRACE_SECONDS + 10  # SIGTERM ignored, so SIGKILL after the grace
    assert "measured one figure" in (out / "log.txt").read_text()


def test_recipe_variants_train_side_by_side_and_come_back_as_fp16_tars_that_assemble(tmp_path):
    """bench/gpu/variants.py: each variant in its own process; its tar holds what `clip-train
    assemble` needs, the tensors in fp16, and the assembled checkpoint carries exactly them."""
    from safetensors.torch import load_file

    from model.training.assemble import assemble

    out = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            "bench/gpu/variants.py",
            str(out),
            "--budget",
            "3",
            "--dry-run",
            "--only",
            "control",
            "identity-text",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((out / "variants.json").read_text())["variants"]
    assert {name: record["status"] for name, record in results.items()} == {"control": "ok", "identity-text": "ok"}
    assert all(record["steps"] >= 1 and record["final"]["val_top1"] is not None for record in results.values())
    assert sorted(path.name for path in out.iterdir()) == [
        "variant-control.tar",
        "variant-identity-text.tar",
        "variants.json",
    ]
    for name, projection in (("control", "learned"), ("identity-text", "identity")):
        tar_path = out / f"variant-{name}.tar"
        assert tar_path.stat().st_size <= 16 * 2**20
        run_dir = tmp_path / name
        with tarfile.open(tar_path) as tar:
            tar.extractall(run_dir, filter="data")
        index = json.loads((run_dir / "trained.json").read_text())
        assert index["recipe"]["text_projection"] == projection
        trained = {}
        for shard in index["shards"]:
            trained.update(torch.load(run_dir / shard, weights_only=True))
        assert {tensor.dtype for tensor in trained.values() if tensor.is_floating_point()} == {torch.float16}
    checkpoint = assemble(tmp_path / "identity-text", tmp_path / "checkpoint", templates=["an emoji of {}."])
    saved = load_file(checkpoint / "model.safetensors")
    for key, tensor in trained.items():
        assert torch.equal(saved[key], tensor), key
