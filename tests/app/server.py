"""A real server for tests: ``python -m app.cli serve`` (or uvicorn) in a subprocess on a free loopback port."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 300  # seconds; importing torch on a busy 2-core machine takes a while
API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # harmless where a server sets no key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(
        self,
        checkpoint: Path | None,
        command: str = "clip-serve",
        environment: dict[str, str] | None = None,
        **settings,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # the repo first, then whatever the caller had (a host may carry the service's packages there)
        python_path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": python_path, "CLIP_HOST": "127.0.0.1", "CLIP_PORT": str(self.port)}
        env = {
            key: value for key, value in env.items() if not key.startswith("CLIP_") or key in ("CLIP_HOST", "CLIP_PORT")
        }
        if checkpoint is not None:
            env["CLIP_CHECKPOINT"] = str(checkpoint)
        env["CLIP_WORKERS"] = "1"  # whatever the default: the tests of several workers ask for them
        env.update({f"CLIP_{key.upper()}": str(value) for key, value in settings.items()})
        env.update(environment or {})
        if command == "clip-serve":
            argv = [sys.executable, "-m", "app.cli", "serve"]
        else:  # the other documented way to start it
            argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        # read the server's log as it comes: a pipe left unread fills (64 KiB of access-log lines) and
        # the server's next log write blocks its event loop
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._lines.extend, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.finish()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {START_TIMEOUT} s")

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode

    def finish(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.wait_exit(30)
        self._reader.join(30)
        return "".join(self._lines)

    def metric(self, name: str) -> float:
        """Value of one sample line of GET /metrics (0 if absent)."""
        text = httpx.get(f"{self.url}/metrics", headers=AUTH, timeout=10).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0


def wait_for_metric(server: Server, name: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while server.metric(name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.05)


def image_bytes(color=(200, 30, 30), size=(48, 40), format="PNG", **save) -> bytes:
    """A real encoded image: a two-colour split so the tower sees some structure."""
    image = Image.new("RGB", size, color)
    image.paste(tuple(255 - c for c in color), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format=format, **save)
    return buffer.getvalue()


def classify(
    url: str,
    images: list[tuple[str, bytes]],
    labels: list[str],
    headers: dict | None = None,
    timeout: float = 60,
    **fields,
) -> httpx.Response:
    files = [("images", (name, data, "application/octet-stream")) for name, data in images]
    data = {"labels": labels, **fields}
    return httpx.post(
        f"{url}/classify", files=files, data=data, headers=AUTH if headers is None else headers, timeout=timeout
    )
