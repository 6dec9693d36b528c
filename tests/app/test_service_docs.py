"""docs/service.md's settings and errors tables are exactly what the code has: every field of
app/settings.py's Settings (name, default, description) and every row of app/errors.py's
ERROR_TABLE, in order. A setting or error code added without its row fails here; the failure
prints the table to paste."""

from __future__ import annotations

from pathlib import Path

import pytest

import model
from app.errors import ERROR_TABLE
from app.settings import Settings

SERVICE_DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"
PACKAGES_ROOT = Path(model.__file__).resolve().parents[1]


def shown_default(default: object) -> str:
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, Path):  # the bundled checkpoint: where it is in any install, not on this machine
        return f"{default.resolve().relative_to(PACKAGES_ROOT)} inside the installed package"
    return str(default)


def settings_table() -> list[str]:
    prefix = Settings.model_config["env_prefix"]
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{prefix}{name.upper()}` | `{shown_default(field.default)}` | {field.description} |")
    return rows


def errors_table() -> list[str]:
    rows = ["| Status | `error` | Example `message` |", "|---|---|---|"]
    return rows + [f"| {status} | `{code}` | {message} |" for status, code, message in ERROR_TABLE]


def documented_table(heading: str) -> list[str]:
    """The first table under ``## heading`` in docs/service.md, one string per row."""
    lines = SERVICE_DOC.read_text().splitlines()
    start = lines.index(f"## {heading}")
    rows: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return rows


@pytest.mark.parametrize(("heading", "table"), [("Settings", settings_table), ("Errors", errors_table)])
def test_the_table_in_the_docs_is_the_one_in_the_code(heading, table):
    expected = table()
    assert documented_table(heading) == expected, "docs/service.md's table should read:\n" + "\n".join(expected)
