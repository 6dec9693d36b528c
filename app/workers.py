"""Several server processes on one port (CLIP_WORKERS): the CPU budget each gets, the supervisor
``clip-serve`` runs them under, and the readiness they share.

The supervisor binds CLIP_HOST:CLIP_PORT once and starts N spawned processes that accept on that one
socket, each a whole server (its own model copy, batcher and model thread). They share a private
temporary directory: ``metrics/`` for prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
so /metrics in any worker adds up all of them) and ``ready/``, where each worker leaves a file once its
model is loaded (so /readyz in any worker answers 200 only when all N are ready). The supervisor
restarts nothing: a worker that exits while the server runs (its model failed to load, it crashed, it
was killed) ends the whole server with a non-zero status, and the orchestrator sees it. SIGTERM is
passed to every worker, and each drains for CLIP_DRAIN_SECONDS as a single server does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
from multiprocessing.connection import wait
from pathlib import Path

from .settings import Settings

log = logging.getLogger("app.workers")

# where the supervisor tells its workers their shared directory is (not a setting: no CLIP_ prefix)
RUN_DIR_VARIABLE = "_CLIP_SERVE_RUN_DIR"
CGROUP_ROOT = Path("/sys/fs/cgroup")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# --- the CPU budget ---------------------------------------------------------------------------


def cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the container's cgroup may use (cgroup v2 ``cpu.max``, else v1 CFS quota/period), or None
    where no quota is set. PyTorch ignores it and starts a thread per core of the machine."""
    v2 = cgroup_root / "cpu.max"
    if v2.is_file():
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    for v1 in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
        quota_file, period_file = v1 / "cpu.cfs_quota_us", v1 / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota_us = int(quota_file.read_text())
            return None if quota_us <= 0 else quota_us / int(period_file.read_text())
    return None


def available_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The cores this process may run on (its CPU affinity), capped by the cgroup's CPU quota (whole
    CPUs, at least one)."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup_root)
    return max(1, min(cores, int(quota))) if quota is not None else cores


def threads_per_worker(workers: int, cores: int) -> int:
    """PyTorch threads for each of ``workers`` processes sharing ``cores``: no oversubscription."""
    return max(1, cores // workers)


# --- what the workers share -------------------------------------------------------------------


class WorkerGroup:
    """A worker's view of its siblings: where each one marks itself ready, and how many there are."""

    def __init__(self, run_dir: Path, size: int):
        self.ready_dir = run_dir / "ready"
        self.size = size

    @classmethod
    def from_environment(cls, settings: Settings) -> WorkerGroup | None:
        """The group this process belongs to, or None when it is a server of its own."""
        run_dir = os.environ.get(RUN_DIR_VARIABLE)
        return cls(Path(run_dir), settings.workers) if run_dir else None

    def mark_ready(self) -> None:
        (self.ready_dir / str(os.getpid())).touch()

    def ready_count(self) -> int:
        return len(list(self.ready_dir.iterdir()))


# --- the supervisor ---------------------------------------------------------------------------


def serve_workers(settings: Settings) -> None:
    """Run CLIP_WORKERS server processes on CLIP_HOST:CLIP_PORT until SIGTERM/SIGINT (then drain them
    all and return) or until one of them exits by itself (then stop the rest and exit 1)."""
    import uvicorn

    run_dir = Path(tempfile.mkdtemp(prefix="clip-serve-"))
    try:
        for name in ("metrics", "ready"):
            (run_dir / name).mkdir()
        # inherited by the workers, which import prometheus-client after it is set (spawned, not forked)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics")
        os.environ[RUN_DIR_VARIABLE] = str(run_dir)
        config = uvicorn.Config(
            "app.main:app",
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=settings.drain_seconds,
        )
        listener = config.bind_socket()
        failed = _supervise(settings, config, listener)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if failed:
        raise SystemExit(1)


def _supervise(settings: Settings, config, listener) -> bool:
    """Start the workers on ``listener`` and wait; True when one exited without being asked to."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked torch threads
    workers = [
        spawn.Process(target=_run_worker, args=(config, listener, settings.log_level), name=f"worker-{number}")
        for number in range(1, settings.workers + 1)
    ]
    for worker in workers:
        worker.start()
    log.info("started %d workers: %s", len(workers), ", ".join(str(worker.pid) for worker in workers))
    failed = None
    while failed is None and not stop.is_set():
        ended = wait([worker.sentinel for worker in workers], timeout=0.25)
        failed = next((worker for worker in workers if worker.sentinel in ended), None)
    if failed is not None and not stop.is_set():
        # the sentinel (a pipe the child held) can close a moment before the kernel reports the exit:
        # reap the process first, or its exit status still reads None
        failed.join(timeout=5)
        log.error(
            "%s (pid %d) exited with status %s while the server was running: stopping the server",
            failed.name,
            failed.pid,
            failed.exitcode,
        )
    else:
        failed = None
        log.info("stopping: each worker drains its requests for up to %d s", settings.drain_seconds)
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.join()
    return failed is not None


def _run_worker(config, listener, log_level: str) -> None:  # pragma: no cover  (runs in the worker)
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    config.configure_logging()
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the server drains on its own
        pass
