"""bench/serve.py, so it cannot rot between the runs on an idle machine: its --help, and a short run
(the tiny checkpoint, two cells of a second) that measures the ceiling, loads the real server and
profiles it with py-spy. No figure is checked against another: this machine is shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.cpu_profile import PARTS

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*arguments: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """bench/serve.py in a process group of its own: past the timeout the group is stopped, its
    server included, rather than the server left running without its parent."""
    argv = [sys.executable, "bench/serve.py", *arguments]
    with subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as bench:
        try:
            stdout, stderr = bench.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(bench.pid, signal.SIGTERM)
            stdout, stderr = bench.communicate()
            raise AssertionError(f"bench/serve.py ran past {timeout} s:\n{stdout}\n{stderr}") from None
    return subprocess.CompletedProcess(argv, bench.returncode, stdout, stderr)


def test_help_names_every_option():
    result = run_bench("--help", timeout=300)
    assert result.returncode == 0, result.stderr
    for option in ("--checkpoint", "--duration", "--json", "--workers", "--compile", "--concurrency", "--images"):
        assert option in result.stdout, option
    assert "--profile, --no-profile" in result.stdout


def test_a_short_run_measures_each_cell_and_says_where_the_servers_cpu_time_went(tiny_checkpoint, tmp_path):
    figures = tmp_path / "figures.json"
    arguments = ("--checkpoint", str(tiny_checkpoint), "--duration", "1", "--concurrency", "2", "--images", "1")
    result = run_bench(*arguments, "--json", str(figures))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(figures.read_text())
    assert data["compile"] == "off" and data["ceiling"]["compiled_batch_sizes"] == []
    assert [(cell["picture"], cell["images"], cell["concurrency"]) for cell in data["cells"]] == [
        ("64 px PNG", 1, 2),
        ("640x480 JPEG", 1, 2),
    ]
    for cell in data["cells"]:
        assert cell["errors"] == 0, cell
        assert cell["queued_at_start"] == 0, cell  # the warm-up's requests are not measured
        profile = cell["profile"]
        assert profile is not None, result.stderr  # py-spy ran and attached
        assert list(profile["shares"]) == list(PARTS)
        if profile["cpu_seconds"] > 0:
            assert abs(sum(profile["shares"].values()) - 1) < 1e-9, profile
    # py-spy sampled the server's own threads: some of its CPU time is in threads that ran Python
    assert any(cell["profile"]["cpu_seconds"] > cell["profile"]["unsampled_cpu_seconds"] for cell in data["cells"])
    assert "where the server's CPU time went" in result.stdout
    table = result.stdout.split("where the server's CPU time went", 1)[1]
    assert all(part in table for part in PARTS), table
