"""summary.md from results.json: the device, the versions, each step's status and its figures, one page."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAX_LINES_PER_STEP = 40


def flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [(f"{prefix}[{index}]", compact(item)) for index, item in enumerate(value)]
    if isinstance(value, dict):
        pairs = []
        for key, inner in value.items():
            pairs += flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    return [(prefix, value)]


def compact(row: dict) -> str:
    """One line for a dict of figures (an HTTP cell, say): its plain values, nested ones left out."""
    return ", ".join(f"{key} {show(value)}" for key, value in row.items() if not isinstance(value, (dict, list)))


def show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "; ".join(map(show, value[:5])) + (f" (+{len(value) - 5} more)" if len(value) > 5 else "")
    return str(value)


def device_line(results: dict) -> str:
    steps = results.get("steps", {})
    environment = steps.get("environment", {}).get("figures", {})
    if not environment:  # a run with --only: the steps' own host records say where they ran
        hosts = [record.get("figures", {}).get("host", {}) for record in steps.values()]
        host = next((host for host in hosts if host), {})
        return (
            f"- device: {host.get('gpu', 'no GPU')}, CUDA {host.get('cuda', '-')} (the environment step did not run)\n"
            f"- Python {host.get('python', '?')}, torch {host.get('torch', '?')}, {host.get('cpu_count', '?')} CPU cores"
        )
    gpu = environment.get("gpu")
    where = (
        (
            f"{gpu['name']} ({gpu['memory_gib']} GiB), driver {environment.get('driver')}, CUDA {environment.get('cuda')}, "
            f"cuDNN {environment.get('cudnn')}"
        )
        if gpu
        else f"no GPU: {environment.get('cpu', {}).get('model', '?')} CPU"
    )
    return (
        f"- device: {where}\n- Python {environment.get('python', '?')}, torch {environment.get('torch', '?')}, "
        f"{environment.get('cpu', {}).get('cores', '?')} CPU cores"
    )


def render(results: dict) -> str:
    lines = [
        f"# GPU command: {'dry run' if results.get('dry_run') else 'results'}",
        "",
        f"- command: `{results.get('command')}`, started {results.get('started')}, "
        f"{results.get('total_seconds', '?')} s in all",
        device_line(results),
        "",
        "| step | status | seconds | cap |",
        "| --- | --- | ---: | ---: |",
    ]
    steps = results.get("steps", {})
    for name, record in steps.items():
        lines.append(f"| {name} | {record['status']} | {record['seconds']} | {record['cap_seconds']} |")
    for name, record in steps.items():
        if name == "environment":
            continue
        lines += ["", f"## {name}", ""]
        pairs = flatten(record.get("figures", {}))
        lines += [f"- {key}: {show(value)}" for key, value in pairs[:MAX_LINES_PER_STEP]]
        if len(pairs) > MAX_LINES_PER_STEP:
            lines.append(f"- ... {len(pairs) - MAX_LINES_PER_STEP} more in results.json")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python3 bench/gpu/summary.py results.json
    print(render(json.loads(Path(sys.argv[1]).read_text())), end="")
