"""bench/batching.py, so it cannot rot between runs on an idle machine: a short run (the tiny
checkpoint, a stand-in device of 5 ms a batch of 4) with every variant. No figure is compared with
another (this machine is shared); the one bound checked is one no host can beat: no variant serves
faster than its stand-in device can compute, which would mean the service never waited for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_run_measures_every_variant_within_the_stand_in_device(tmp_path):
    out = tmp_path / "batching.json"
    arguments = ["--compute-ms", "5", "--max-batch", "4", "--requests", "200", "--rounds", "1", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, "bench/batching.py", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    ceiling = figures["setup"]["ceiling_images_per_s"]
    assert ceiling == 800
    assert set(figures["variants"]) == {
        "async_in_flight_1",
        "async_in_flight_2",
        "sync_in_flight_1",
        "sync_in_flight_2",
    }
    for name, variant in figures["variants"].items():
        assert 0 < variant["images_per_s"] <= 1.1 * ceiling, (name, variant)  # 10%: the clock's granularity
        assert 1 <= variant["mean_batch"] <= 4, (name, variant)
        assert name in result.stdout
