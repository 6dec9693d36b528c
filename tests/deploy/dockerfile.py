"""A small Dockerfile reader for the deployment checks: instructions, the runtime stage's ENV, CMD
and HEALTHCHECK. Shared by tests/deploy/test_docker.py and scripts/replay_runtime.sh, which runs

    python -m tests.deploy.dockerfile env|cmd|healthcheck [Dockerfile]

and gets the image's environment as NAME=value lines, or the exec-form command as a JSON list.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    arguments: str
    line: int  # where it starts, 1-based


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions in order, continuation lines joined, comments dropped."""
    result, pending, start = [], "", 0
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip(), start))
    return result


def stages(path: Path = DOCKERFILE) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def runtime_stage(path: Path = DOCKERFILE) -> list[Instruction]:
    return stages(path)[-1]


def env(stage: list[Instruction]) -> dict[str, str]:
    """The stage's ENV settings (NAME=value form)."""
    values = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def exec_form(arguments: str) -> list[str]:
    command = json.loads(arguments)
    if not (isinstance(command, list) and all(isinstance(word, str) for word in command)):
        raise ValueError(f"not an exec-form (JSON array) command: {arguments}")
    return command


def cmd(stage: list[Instruction]) -> list[str]:
    return exec_form([i for i in stage if i.keyword == "CMD"][-1].arguments)


def healthcheck(stage: list[Instruction]) -> list[str]:
    """The HEALTHCHECK's exec-form command, its options (--interval ...) left out."""
    arguments = [i for i in stage if i.keyword == "HEALTHCHECK"][-1].arguments
    _, _, command = arguments.partition("CMD ")
    return exec_form(command)


def main(argv: list[str]) -> None:
    what, path = argv[0], Path(argv[1]) if len(argv) > 1 else DOCKERFILE
    stage = runtime_stage(path)
    if what == "env":
        print("\n".join(f"{name}={value}" for name, value in env(stage).items()))
    elif what in ("cmd", "healthcheck"):
        print(json.dumps(cmd(stage) if what == "cmd" else healthcheck(stage)))
    else:
        raise SystemExit("usage: python -m tests.deploy.dockerfile env|cmd|healthcheck [Dockerfile]")


if __name__ == "__main__":
    main(sys.argv[1:])
