"""Where a server's CPU time goes while it is under load, by part of the request path: protocol
(uvicorn, httptools/h11, asyncio), multipart (python-multipart, Starlette's form parser), decode
(Pillow, app/decoding.py, model/preprocess.py), model (torch, the engine, the batcher),
serialisation (the response's rows, pydantic, json, Starlette's responses) and other (routes,
middleware, the rest).

How, with little disturbance of what is measured:

- The kernel's CPU time of every thread of the server's processes (``/proc/PID/task/TID/stat``,
  user + system), read before and after the load: what each thread really used.
- py-spy (a sampling profiler, a dev dependency) reads the server's Python stacks from outside
  the process, 100 times a second, without pausing it (``--nonblocking``), idle threads left out.
  Each sampled stack is charged to one part by its innermost frame that names one (``RULES``), and
  each thread's CPU time is split among the parts in proportion to that thread's samples.
- Threads that never run Python (so py-spy cannot see them) are PyTorch's intra-op threads, which
  run the model's kernels alongside the model thread, and, when labels miss the cache, the
  tokenizer's: their CPU time is charged to model.

py-spy attaches with ptrace rights over the server: as the same user where
/proc/sys/kernel/yama/ptrace_scope is 0 or absent (this machine), else it needs CAP_SYS_PTRACE.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PARTS = ("protocol", "multipart", "decode", "model", "serialisation", "other")
# In order: a frame is checked against each rule in turn, the first that matches names its part. A
# stack's part is that of its innermost frame that matches any rule. py-spy writes a frame as
# "function (path/of/module.py:line)", the path from the package (or the script's folder) down.
RULES: list[tuple[str, re.Pattern[str]]] = [
    (part, re.compile(pattern))
    for part, pattern in (
        ("model", r"^normalize_pixels \(model/preprocess\.py"),  # on the model thread, in the tower's forward
        ("decode", r"(?:^|\.)decode_image \(app/engine\.py|\((?:PIL/|app/decoding\.py|model/preprocess\.py)"),
        ("serialisation", r"^(?:scores|top_k)(?:\.\S+)? \(app/engine\.py"),  # the response's score rows
        ("model", r"\((?:torch/|app/engine\.py|app/batching\.py|model/|tokenizers/)"),
        ("multipart", r"\((?:python_multipart/|multipart/|starlette/formparsers\.py|tempfile\.py)"),
        (
            "serialisation",
            r"\((?:json/|pydantic/|pydantic_core/|fastapi/encoders\.py|starlette/responses\.py|dataclasses\.py)"
            r"|(?:^|\.)serialize_response \(fastapi/routing\.py",
        ),
        ("protocol", r"\((?:uvicorn/|httptools/|h11/|uvloop/|asyncio/|selectors\.py|socket\.py)"),
        ("other", r"\((?:app/|starlette/|fastapi/|anyio/)"),
    )
]
# A stack whose innermost frame is one of these is a thread waiting for work (py-spy, not pausing the
# process, counts a thread woken but not yet running as active): no part's work, left out of the split.
WAITING = re.compile(
    r"^_worker \(concurrent/futures/thread\.py|\(threading\.py|\(queue\.py|^[\w.]*select \(selectors\.py"
)
_THREAD = re.compile(r"(?:^|;)thread \((\d+)\)[^;]*")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def part_of(frames: list[str]) -> str:
    """The part a stack (outermost frame first) is charged to, or "waiting"."""
    if WAITING.search(frames[-1]):
        return "waiting"
    for frame in reversed(frames):
        for part, pattern in RULES:
            if pattern.search(frame):
                return part
    return "other"


def samples_by_thread(collapsed: Iterable[str]) -> dict[int, Counter[str]]:
    """py-spy's raw output (``--format raw --threads``: one "frame;frame;... count" line per distinct
    stack, the process and the thread as its first frames) -> samples per part, per thread id."""
    result: dict[int, Counter[str]] = {}
    for line in collapsed:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        thread = _THREAD.search(stack)
        if thread is None:
            raise ValueError(f"no 'thread (id)' frame (was py-spy run with --threads?): {line[:200]}")
        frames = stack[thread.end() :].lstrip(";").split(";")
        result.setdefault(int(thread.group(1)), Counter())[part_of(frames)] += int(count)
    return result


def attribute(samples: dict[int, Counter[str]], cpu_seconds: dict[int, float]) -> dict[str, float]:
    """CPU seconds per part: each thread's seconds split as its samples of work are; a thread py-spy
    never saw goes to model (see the module's docstring), one seen only waiting to other."""
    seconds = dict.fromkeys(PARTS, 0.0)
    for thread, used in cpu_seconds.items():
        if thread not in samples:
            seconds["model"] += used
            continue
        working = {part: count for part, count in samples[thread].items() if part != "waiting"} or {"other": 1}
        total = sum(working.values())
        for part, count in working.items():
            seconds[part] += used * count / total
    return seconds


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (CLIP_WORKERS' workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of every thread of ``pid``'s process tree, by thread id."""
    seconds = {}
    for process in process_tree(pid):
        for task in Path(f"/proc/{process}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return seconds


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")  # the virtual environment's own
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class CpuProfile:
    """``with CpuProfile(pid, seconds) as profile: <load the server for seconds>``; then
    ``profile.result`` (None, and ``profile.problem`` says why, where py-spy could not run)."""

    def __init__(self, pid: int, seconds: float, rate: int = 100):
        self.pid, self.seconds, self.rate = pid, seconds, rate
        self.result: dict | None = None
        self.problem: str | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="cpu-profile-")
        self._output = Path(self._scratch.name) / "stacks.txt"

    def __enter__(self) -> CpuProfile:
        executable = py_spy()
        self._spy = None
        if executable is None:
            self.problem = "py-spy is not installed (pip install -e '.[dev]')"
        else:
            self._spy = subprocess.Popen(
                [
                    *(executable, "record", "--pid", str(self.pid), "--subprocesses", "--nonblocking"),
                    *("--threads", "--rate", str(self.rate), "--format", "raw"),
                    *("--duration", str(max(1, round(self.seconds))), "--output", str(self._output)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        self._before = thread_cpu_seconds(self.pid)
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc_info) -> None:
        after = thread_cpu_seconds(self.pid)
        wall = time.monotonic() - self._started
        try:
            if self._spy is not None:
                self._finish(after, wall)
        finally:
            self._scratch.cleanup()

    def _finish(self, after: dict[int, float], wall: float) -> None:
        assert self._spy is not None
        try:
            _, errors = self._spy.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self._spy.kill()
            _, errors = self._spy.communicate()
        if self._spy.returncode != 0 or not self._output.is_file():
            last = (errors or "").strip().splitlines()
            self.problem = f"py-spy failed ({last[-1] if last else f'exit status {self._spy.returncode}'})"
            return
        used = {thread: seconds - self._before.get(thread, 0.0) for thread, seconds in after.items()}
        samples = samples_by_thread(self._output.read_text().splitlines())
        busy = {thread: value for thread, value in used.items() if value > 0}
        seconds = attribute(samples, busy)
        total = sum(seconds.values())
        self.result = {
            "cpu_seconds": total,
            # of which in threads py-spy never saw (PyTorch's, counted as model)
            "unsampled_cpu_seconds": sum(value for thread, value in busy.items() if thread not in samples),
            "cores": total / wall,
            "shares": {part: (value / total if total else 0.0) for part, value in seconds.items()},
            "samples": sum(sum(counts.values()) for counts in samples.values()),
            "waiting_samples": sum(counts["waiting"] for counts in samples.values()),
        }
