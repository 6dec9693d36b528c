"""Step 1: what the run is measured on: GPU name and memory, driver, Python, torch, CUDA, cuDNN,
the CPU, and which of the peers (transformers, timm, torchvision) and the server's packages import.

    python3 bench/gpu/environment.py --result env.json [--dry-run]
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess

import torch
from common import Results, step_arguments

PACKAGES = (
    "transformers",
    "timm",
    "torchvision",
    "fastapi",
    "uvicorn",
    "pydantic",
    "pydantic_settings",
    "multipart",
    "fastapi_offline",
    "httpx",
    "uvloop",
    "httptools",
    "PIL",
    "numpy",
    "tokenizers",
    "safetensors",
)


def importable(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as error:  # a broken install raises more than ImportError (torchvision: RuntimeError)
        return f"not importable: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
    return getattr(module, "__version__", "importable")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def driver_version() -> str | None:
    try:
        return (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def main() -> None:
    args = step_arguments(__doc__.split("\n")[0]).parse_args()
    results = Results(args.result)
    results["python"] = platform.python_version()
    results["torch"] = torch.__version__
    results["cpu"] = {"model": cpu_model(), "cores": os.cpu_count()}
    results["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        results["gpu"] = {
            "name": properties.name,
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "multiprocessors": properties.multi_processor_count,
            "capability": f"{properties.major}.{properties.minor}",
            "bf16": torch.cuda.is_bf16_supported(),
        }
        results["cuda"] = torch.version.cuda
        results["cudnn"] = torch.backends.cudnn.version()
        results["driver"] = driver_version()
    results["packages"] = {name: importable(name) for name in PACKAGES}


if __name__ == "__main__":
    main()
