"""Several workers (CLIP_WORKERS, app/workers.py): what a server of two processes on one port keeps
true. /metrics adds up both, /readyz waits for both, a worker that ends (its model cannot load, or
it is killed) ends the whole server non-zero instead of being restarted, SIGTERM drains both, and
each worker takes its share of the cores. The real clip-serve, two workers, the tiny checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from app.main import create_app
from app.service import ZeroShotService
from app.settings import Settings
from app.workers import RUN_DIR_VARIABLE, available_cores, cpu_quota, threads_per_worker
from tests.conftest import make_unloadable_checkpoint

from .server import Server, classify, image_bytes, wait_for_metric

EXIT_TIMEOUT = 120  # seconds for a server to end by itself; far more than it needs
# each image waits 20 s for company (max_batch is never reached), so requests stay in flight in
# both workers long enough to send SIGTERM; the 30 s drain lets them finish
HOLD = dict(max_batch=16, batch_wait_ms=20_000, batch_gather="always", drain_seconds=30)
CLASSIFIED = 'clip_requests_total{route="/classify",status="200"}'


class TwoWorkers(Server):
    """clip-serve with CLIP_WORKERS=2, its private temporary directory made inside ``scratch``."""

    def __init__(self, checkpoint: Path, scratch: Path, **settings):
        self.scratch = scratch
        super().__init__(checkpoint, environment={"TMPDIR": str(scratch)}, workers=2, **settings)

    def run_dirs(self) -> list[Path]:
        return list(self.scratch.glob("clip-serve-*"))

    def worker_pids(self) -> list[int]:
        (run_dir,) = self.run_dirs()
        return sorted(int(marker.name) for marker in (run_dir / "ready").iterdir())

    def per_worker(self, name: str, labels: dict[str, str] | None = None) -> dict[int, float]:
        """One sample's value in each worker's own metrics files (prometheus-client's, named by pid)."""
        (run_dir,) = self.run_dirs()
        files = list((run_dir / "metrics").glob("*.db"))
        values = {}
        for pid in {int(file.stem.rsplit("_", 1)[1]) for file in files}:
            with tempfile.TemporaryDirectory() as alone:
                for file in files:
                    if file.stem.endswith(f"_{pid}"):
                        shutil.copy(file, alone)
                registry = CollectorRegistry()
                MultiProcessCollector(registry, path=alone)
                values[pid] = registry.get_sample_value(name, labels or {}) or 0.0
        return values

    def exit_status(self) -> int:
        """The status the server ends with by itself (a test fails rather than wait for ever)."""
        try:
            return self.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_TIMEOUT} s on:\n{self.finish()}")


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_checkpoint):
    """The module's servers, started together (each worker pays seconds for importing torch)."""
    unloadable = make_unloadable_checkpoint(tmp_path_factory.mktemp("unloadable"), tiny_checkpoint)

    def start(checkpoint: Path, **settings) -> TwoWorkers:
        return TwoWorkers(checkpoint, tmp_path_factory.mktemp("tmp"), **settings)

    servers = {
        "serving": start(tiny_checkpoint),
        "holding": start(tiny_checkpoint, **HOLD),
        "to kill": start(tiny_checkpoint),
        "load fails": start(unloadable),
    }
    yield servers
    for server in servers.values():
        server.finish()


def test_metrics_add_up_the_requests_of_every_worker(launched):
    server = launched["serving"].wait_ready()
    sent = 0
    while min((served := server.per_worker("clip_images_classified_total")).values()) == 0:
        assert len(served) == 2, served
        assert sent < 200, f"one worker got none of {sent} requests, each on a new connection: {served}"
        assert classify(server.url, [("a.png", image_bytes())], ["cat", "dog"]).status_code == 200
        sent += 1
    assert server.metric("clip_images_classified_total") == sent
    wait_for_metric(server, CLASSIFIED, sent)  # counted once the answer has gone out
    assert sum(server.per_worker("clip_requests_total", {"route": "/classify", "status": "200"}).values()) == sent


def test_the_queue_gauge_is_the_sum_of_both_workers_queues_and_sigterm_drains_both(launched):
    server = launched["holding"].wait_ready()
    with ThreadPoolExecutor(HOLD["max_batch"]) as pool:
        in_flight = []
        while min((queued := server.per_worker("clip_queued_images")).values()) == 0:
            assert len(in_flight) < HOLD["max_batch"] - 1, f"every request went to one worker: {queued}"
            in_flight.append(pool.submit(classify, server.url, [("a.png", image_bytes())], ["cat"], timeout=120))
            wait_for_metric(server, "clip_queued_images", len(in_flight))  # livesum: both workers' images
        server.process.send_signal(signal.SIGTERM)
        answers = [request.result() for request in in_flight]
    assert [answer.status_code for answer in answers] == [200] * len(in_flight), [a.text for a in answers]
    assert server.exit_status() == 0
    assert server.run_dirs() == [], "the private metrics and readiness directory outlived the server"
    output = server.finish()
    assert output.count("Application shutdown complete") == 2, output


def test_a_worker_whose_model_cannot_load_ends_the_whole_server_non_zero(launched):
    server = launched["load fails"]
    status = server.exit_status()
    output = server.finish()
    assert status == 1, output
    assert "model failed to load" in output and "while the server was running: stopping the server" in output
    assert output.count("Started server process") == 2, f"a worker was restarted:\n{output}"
    assert server.run_dirs() == []


def test_a_worker_that_dies_ends_the_whole_server_non_zero(launched):
    server = launched["to kill"].wait_ready()
    killed, other = server.worker_pids()
    os.kill(killed, signal.SIGKILL)
    status = server.exit_status()
    output = server.finish()
    assert status == 1, output
    assert f"(pid {killed}) exited with status -9 while the server was running" in output
    assert not Path(f"/proc/{other}").exists(), "the other worker outlived the server"


# --- in one process: readiness across workers, the cores each one takes --------------------------


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def torch_threads_restored():
    """A service sets the process's PyTorch threads; give the test process its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.anyio
async def test_readyz_is_503_until_every_worker_has_loaded_its_model(
    tiny_checkpoint, tmp_path, monkeypatch, torch_threads_restored
):
    """This process is one of two workers, loaded; its sibling has not marked itself ready yet."""
    (tmp_path / "ready").mkdir()
    monkeypatch.setenv(RUN_DIR_VARIABLE, str(tmp_path))
    app = create_app(Settings(checkpoint=tiny_checkpoint, workers=2))
    service = app.state.service
    service.start()
    await service.wait_loaded()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            waiting = await client.get("/readyz")
            assert waiting.status_code == 503 and waiting.headers["retry-after"] == "2"
            assert waiting.json()["message"] == "1 of 2 workers have loaded the model; retry shortly"
            assert [marker.name for marker in (tmp_path / "ready").iterdir()] == [str(os.getpid())]
            (tmp_path / "ready" / "sibling").touch()  # what the other worker does once it is ready
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await service.stop()


@pytest.mark.anyio
async def test_a_worker_takes_its_share_of_the_cores_for_pytorch(tiny_checkpoint, torch_threads_restored):
    service = ZeroShotService(Settings(checkpoint=tiny_checkpoint, workers=2))
    service.start()
    await service.stop()
    assert torch.get_num_threads() == threads_per_worker(2, available_cores())


@pytest.mark.parametrize("workers, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (3, 8, 2), (2, 1, 1), (4, 16, 4)])
def test_workers_divide_the_cores_without_oversubscribing_them(workers, cores, threads):
    assert threads_per_worker(workers, cores) == threads


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
    ids=["v2 quota", "v2 no quota", "v1 quota", "v1 cpuacct quota", "v1 no quota", "no cgroup files"],
)
def test_the_cpu_quota_is_read_from_cgroup_v2_or_v1(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_quota(tmp_path) == quota


def test_available_cores_are_the_affinity_capped_by_the_quota_in_whole_cpus(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path) == affinity  # no quota
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cores(tmp_path) == 1  # half a CPU still runs one thread
    (tmp_path / "cpu.max").write_text(f"{(affinity + 4) * 100000} 100000\n")
    assert available_cores(tmp_path) == affinity  # a quota above the cores it may run on
    if affinity >= 2:
        (tmp_path / "cpu.max").write_text("170000 100000\n")
        assert available_cores(tmp_path) == 1
