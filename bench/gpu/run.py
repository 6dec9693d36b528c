"""The GPU command's steps, in order, each under its own time cap: environment, GPU training,
CUDA tests, image-tower throughput, the engine without HTTP, HTTP end to end.

    bench/gpu.sh OUT_DIR [--dry-run] [--only STEP ...]

Each step is a script of its own (bench/gpu/<step>.py) run in a subprocess, so a step that
hangs is killed at its cap and a step that crashes (CUDA errors included) leaves the others
running. After every step, OUT_DIR/results.json (every figure so far) and OUT_DIR/summary.md
are rewritten, so a call cut short still returns what finished; OUT_DIR/log.txt has every
line every step printed; the training step's outputs (trained-*.pt, trained.json,
history.json) are copied into OUT_DIR for `clip-train assemble` on the CPU host. At most 8
files come back from a lent GPU host, so nothing else is written there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CUDA_TEST_PATHS = ["tests/model/test_cuda.py", "tests/app/test_cuda.py"]
KILL_GRACE_SECONDS = 5
BUDGET_MARGIN = 10  # seconds of a cap a step keeps for starting up and writing out, beyond its budget
DRY_RUN_CAP = 300  # each step's cap in a dry run: it proves the code runs, not how fast a busy CPU runs it


@dataclass
class Step:
    name: str
    cap: float  # seconds on the GPU host
    script: str | None = None
    what: str = ""


STEPS = [
    Step("environment", 30, "environment.py", "GPU, driver, torch, CUDA, cuDNN, importable peers"),
    Step("training", 220, "training.py", "the default model with the GPU recipe, from the carried bundle"),
    Step("cuda_tests", 60, None, "pytest -m cuda: engine bf16/fp16 vs CPU fp32, padding, batcher, clamp, masks"),
    Step("tower", 100, "tower.py", "ViT-B/16 images/s: ours eager/compiled vs the seed, transformers, timm"),
    Step("engine", 75, "engine.py", "ZeroShotEngine + DynamicBatcher without HTTP, JPEG and pre-decoded"),
    Step("http", 55, "http_e2e.py", "clip-serve under load: concurrency 1/16/64, 1 and 8 images"),
]


@dataclass
class Context:
    out: Path
    scratch: Path
    dry_run: bool
    log: Log
    caps: dict[str, float] = field(default_factory=dict)  # --cap overrides
    results: dict = field(default_factory=dict)


class Log:
    """Every line to OUT_DIR/log.txt and to stderr."""

    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            self.file.write(text + "\n")
            print(text, file=sys.stderr, flush=True)

    def event(self, text: str) -> None:
        self.line(f"[{time.strftime('%H:%M:%S')}] == {text}")


def run_capped(command: list[str], cap: float, log: Log, env: dict | None = None) -> tuple[str, int | None]:
    """Run ``command`` in its own process group, its output into the log. At the cap the group gets
    SIGTERM (a step's cleanup runs: the HTTP step stops its server), then SIGKILL after a grace.
    Returns (status, exit code): ok, failed, or timed out."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    reader = threading.Thread(
        target=lambda: [log.line("    " + line.rstrip("\n")) for line in process.stdout], daemon=True
    )
    reader.start()
    try:
        code = process.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=5)
        return "timed out", None
    reader.join(timeout=5)
    return ("ok" if code == 0 else "failed"), code


def step_cap(step: Step, context: Context) -> float:
    return context.caps.get(step.name, DRY_RUN_CAP if context.dry_run else step.cap)


def step_command(step: Step, context: Context, result: Path) -> tuple[list[str], dict]:
    """The step's command line and extra environment."""
    if step.script is None:  # the CUDA tests
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "cuda",
            *CUDA_TEST_PATHS,
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={result.with_suffix('.xml')}",
        ]
        # cpu: the same tests on the CPU stand-in; cuda: fail, never skip, where CUDA is missing
        return command, {"CLIP_TEST_CUDA_DEVICE": "cpu" if context.dry_run else "cuda"}
    cap = step_cap(step, context)
    command = [sys.executable, str(HERE / step.script), "--result", str(result), "--budget", str(cap - BUDGET_MARGIN)]
    if step.name == "training":
        command += ["--run-dir", str(context.scratch / "run")]
    return command + (["--dry-run"] if context.dry_run else []), {}


def junit_figures(path: Path) -> dict:
    """passed / failed / skipped counts and each failure's first line, from pytest's JUnit XML."""
    if not path.is_file():
        return {}
    counts, failures, skipped = {"passed": 0, "failed": 0, "skipped": 0}, [], []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            counts["failed"] += 1
            failures.append(
                f"{name}: {(problem.get('message') or '').splitlines()[0][:300] if problem.get('message') else ''}"
            )
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            skipped.append(f"{name}: {case.find('skipped').get('message', '')[:200]}")
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures, "skipped_reasons": skipped}


def collect_training_outputs(context: Context) -> list[str]:
    """trained.json, the shards it names (not stray ones from a save cut short) and history.json."""
    run_dir = context.scratch / "run"
    index = run_dir / "trained.json"
    if not index.is_file():
        return []
    names = ["trained.json", *json.loads(index.read_text())["shards"], "history.json"]
    for name in names:
        shutil.copy2(run_dir / name, context.out / name)
    return names


def run_step(step: Step, context: Context) -> dict:
    result = context.scratch / f"{step.name}.json"
    command, env = step_command(step, context, result)
    cap = step_cap(step, context)
    context.log.event(f"{step.name}: start (cap {cap:g} s): {step.what}")
    started = time.perf_counter()
    status, code = run_capped(command, cap, context.log, env)
    record = {
        "status": status,
        "exit_code": code,
        "seconds": round(time.perf_counter() - started, 1),
        "cap_seconds": cap,
    }
    try:  # what the step left, even when it was cut short; a torn file is reported, not fatal
        record["figures"] = (
            junit_figures(result.with_suffix(".xml"))
            if step.script is None
            else (json.loads(result.read_text()) if result.is_file() else {})
        )
        if step.name == "training":
            record["returned_files"] = collect_training_outputs(context)
    except (OSError, ValueError, KeyError, ElementTree.ParseError) as error:
        record["unreadable"] = f"{type(error).__name__}: {error}"
    context.log.event(f"{step.name}: {status} after {record['seconds']} s")
    return record


def write_outputs(context: Context) -> None:
    (context.out / "results.json").write_text(json.dumps(context.results, indent=2, default=str) + "\n")
    from summary import render  # noqa: E402  (bench/gpu/summary.py, beside this file)

    (context.out / "summary.md").write_text(render(context.results))


def cap_override(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    names = [step.name for step in STEPS]
    if name not in names or not seconds.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"expected STEP=SECONDS with STEP one of {', '.join(names)}, not {text!r}")
    return name, float(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for results.json, summary.md, log.txt and the training outputs")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny sizes and short caps")
    parser.add_argument("--only", nargs="+", choices=[step.name for step in STEPS], help="run these steps only")
    parser.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        type=cap_override,
        help="another cap for a step, e.g. --cap training=120 (repeatable)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    context = Context(
        args.out,
        Path(tempfile.mkdtemp(prefix="clip-gpu-")),
        args.dry_run,
        Log(args.out / "log.txt"),
        caps=dict(args.cap),
    )
    context.results = {
        "command": "bench/gpu.sh " + " ".join(sys.argv[1:]),
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "steps": {},
    }
    started = time.perf_counter()
    for step in STEPS:
        if args.only and step.name not in args.only:
            continue
        context.results["steps"][step.name] = run_step(step, context)
        context.results["total_seconds"] = round(time.perf_counter() - started, 1)
        write_outputs(context)
    context.log.event(f"all steps done in {context.results['total_seconds']} s; results in {args.out}")
    failed = [name for name, record in context.results["steps"].items() if record["status"] != "ok"]
    if failed:
        context.log.event(f"steps not ok: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
