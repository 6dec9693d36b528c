"""bench/cpu_profile.py: stacks py-spy recorded from a real server under wrk (tests/bench/data/
server-stacks.txt, 13 lines of `py-spy record --format raw --threads` against clip-serve with the
tiny checkpoint) charged to the part of the request path their frames name; each thread's CPU time
split as its samples are; the kernel's per-thread CPU time read right."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.cpu_profile import PARTS, attribute, process_tree, samples_by_thread, thread_cpu_seconds

STACKS = Path(__file__).parent / "data" / "server-stacks.txt"
MAIN, MODEL, DECODE_0, DECODE_1 = 23377, 23563, 23577, 23578  # the recorded server's thread ids
# each recorded stack's innermost frame, and the part a reader of the whole stack charges it to
EXPECTED = {
    "Runner.run (asyncio/runners.py:118)": "protocol",  # uvloop's loop, in C: sockets, httptools
    "RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:524)": "protocol",
    "MultipartParser._internal_write (python_multipart/multipart.py:1431)": "multipart",
    "MultiPartParser.on_part_begin (starlette/formparsers.py:167)": "multipart",
    "ImageFile.load (PIL/ImageFile.py:425)": "decode",
    "stack (numpy/_core/shape_base.py:465)": "decode",  # preprocess_images, on a decode thread
    # under DynamicBatcher._execute (since renamed _start): the batcher hands a batch to the model thread
    "ThreadPoolExecutor.submit (concurrent/futures/thread.py:175)": "model",
    "Linear.forward (torch/nn/modules/linear.py:134)": "model",
    "normalize_pixels (model/preprocess.py:157)": "model",  # the tower's first step, on the model thread
    "scores.<locals>.<listcomp>.<listcomp> (app/engine.py:238)": "serialisation",  # the response's rows
    "TypeAdapter.dump_json (pydantic/type_adapter.py:651)": "serialisation",
    "_worker (concurrent/futures/thread.py:81)": "waiting",  # an idle decode thread, woken
    "uuid4 (uuid.py:723)": "other",  # the request id
}


def recorded() -> list[str]:
    return STACKS.read_text().splitlines()


def test_each_recorded_stack_goes_to_the_part_its_frames_name():
    lines = recorded()
    assert len(lines) == len(EXPECTED)
    for line in lines:
        stack, count = line.rsplit(" ", 1)
        leaf = stack.rsplit(";", 1)[1]
        thread = int(re.search(r"thread \((\d+)\)", stack).group(1))
        assert samples_by_thread([line]) == {thread: Counter({EXPECTED[leaf]: int(count)})}, leaf


def test_samples_add_up_per_thread():
    assert samples_by_thread(recorded()) == {
        MAIN: Counter(protocol=155 + 1, multipart=1 + 1, model=1, serialisation=70 + 10, other=1),
        MODEL: Counter(model=5 + 11),
        DECODE_0: Counter(decode=46),
        DECODE_1: Counter(decode=4, waiting=112),
    }


def test_each_threads_cpu_time_is_split_as_its_samples_of_work_are():
    native = 99999  # a thread py-spy never saw: PyTorch's intra-op pool
    cpu = {MAIN: 2.4, MODEL: 1.6, DECODE_0: 0.46, DECODE_1: 0.2, native: 0.8}
    seconds = attribute(samples_by_thread(recorded()), cpu)
    # by hand: the main thread's 240 samples of work; decode_1's 112 waiting samples left out
    assert seconds == pytest.approx(
        {
            "protocol": 2.4 * 156 / 240,
            "multipart": 2.4 * 2 / 240,
            "decode": 0.46 + 0.2,
            "model": 2.4 * 1 / 240 + 1.6 + 0.8,
            "serialisation": 2.4 * 80 / 240,
            "other": 2.4 * 1 / 240,
        }
    )
    assert list(seconds) == list(PARTS)
    assert attribute({7: Counter(waiting=3)}, {7: 0.1}) == pytest.approx({**dict.fromkeys(PARTS, 0.0), "other": 0.1})


def test_a_line_without_a_thread_frame_is_refused():
    with pytest.raises(ValueError, match="--threads"):
        samples_by_thread(['process 1:"python";main (x.py:1) 3'])


def test_thread_cpu_time_is_the_kernels():
    deadline = time.thread_time() + 0.3
    while time.thread_time() < deadline:  # CPU time, not wall time: the same on a busy machine
        sum(range(1000))
    measured = thread_cpu_seconds(os.getpid())[threading.get_native_id()]
    assert measured == pytest.approx(time.thread_time(), abs=0.05)


def test_the_process_tree_holds_children_and_grandchildren():
    script = "import subprocess; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); p.wait()"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        tree = process_tree(os.getpid())
        assert {os.getpid(), child.pid, grandchild} <= set(tree)
        assert tree.count(os.getpid()) == 1
    finally:
        os.kill(grandchild, 15)
        child.wait(30)
