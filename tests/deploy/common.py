"""What the deployment checks share: the repository's paths, the image's fixed settings, the app's
setting names (read from its pydantic-settings classes), the deploy doc's commands, and how a
missing prerequisite is reported (a skip with its reason; a failure under CI=true)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.ci_skips import running_in_ci

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DOC = ROOT / "docs" / "deployment.md"
COMPOSE = ROOT / "docker-compose.yml"
IMAGE_PORT = "8000"
# The image fixes these (Dockerfile ENV: 0.0.0.0:8000); a deployment maps ports instead.
IMAGE_SETTINGS = {"CLIP_HOST", "CLIP_PORT"}


def missing_prerequisite(message: str):
    """Skip with the reason; under CI=true fail instead, so CI never loses a check quietly."""
    if running_in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def require_app():
    if not (ROOT / "app" / "main.py").is_file():
        pytest.skip("app/main.py is not on this branch yet: the service (issue 3) is not merged")


def app_setting_names() -> set[str]:
    """The environment variable of every field of the app's pydantic-settings classes."""
    require_app()
    from pydantic_settings import BaseSettings

    import app.main  # noqa: F401  (loads the app's modules)

    classes = {
        value
        for name, module in list(sys.modules.items())
        if name == "app" or name.startswith("app.")
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__.startswith("app")
    }
    assert classes, "no pydantic-settings class found in app/"
    names = set()
    for settings in classes:
        prefix = settings.model_config.get("env_prefix", "")
        for field_name, field in settings.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else None
            names.add((alias or f"{prefix}{field_name}").upper())
    return names


def deploy_doc_commands(doc: Path = DEPLOY_DOC) -> list[str]:
    """Every line of the doc's ```bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            commands.append((pending + line).strip())
            pending = ""
    return [command for command in commands if command]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service_on(device: str) -> dict:
    """The compose service whose CLIP_DEVICE is DEVICE (cuda or cpu)."""
    [service] = [s for s in compose()["services"].values() if s.get("environment", {}).get("CLIP_DEVICE") == device]
    return service
