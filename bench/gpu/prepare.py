"""Prepare the carry folder for a call of bench/gpu.sh on a lent GPU host, and check its size.

    python bench/gpu/prepare.py [--bundle /work/runs/emoji-64.npz]

A lent GPU host has no network, no ../shared and none of the server's packages (it has torch,
numpy, Pillow, tokenizers, safetensors, httpx, uvloop, pytest, transformers, timm), and a call
carries at most 64 MiB: the working tree's tracked and untracked-not-ignored files plus what
`carry` names. This writes the ignored folder .carry/:

    .carry/wheels/     the server's packages for CPython 3.12 manylinux, at the versions installed
                       here (so the GPU host runs what the tests ran); bench/gpu.sh installs them
    .carry/seed/       the seed's code, for the tower comparison
    .carry/bundle.npz  the packed training bundle (clip-train pack), for the training step

and prints the call's size. The bundled weights (model/weights/emoji-clip/model.safetensors,
55.7 MiB) must stay behind: untrack them for the call (the commands are printed) and restore after.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

from common import CARRY, ROOT

SEED = ROOT.parent / "shared" / "seed" / "seed_clip.py"
WEIGHTS = "model/weights/emoji-clip/model.safetensors"
LIMIT_BYTES = 64 * 2**20
# What the server needs that the GPU host's image lacks (device tool KINDS.md, "Python packages
# already there"): fastapi and its chain; typing-extensions because pydantic needs a newer one.
SERVER_PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "httptools",  # uvloop is already there
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "python-multipart",
    "fastapi-offline",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "opentelemetry-api",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def download_wheels(directory: Path) -> None:
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in SERVER_PACKAGES]
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(directory),
            *pins,
        ],
        check=True,
    )


def tree_bytes(exclude: set[str]) -> int:
    """What a call sends besides `carry`: tracked files and untracked files git does not ignore."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    return sum(
        (ROOT / name).stat().st_size for name in listed if name and name not in exclude and (ROOT / name).is_file()
    )


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="the packed training bundle to carry (clip-train pack)")
    parser.add_argument("--skip-wheels", action="store_true", help="keep .carry/wheels as it is")
    args = parser.parse_args()
    CARRY.mkdir(exist_ok=True)
    if not args.skip_wheels:
        download_wheels(CARRY / "wheels")
    (CARRY / "seed").mkdir(exist_ok=True)
    shutil.copy2(SEED, CARRY / "seed" / SEED.name)
    if args.bundle:
        shutil.copy2(args.bundle, CARRY / "bundle.npz")
    elif not (CARRY / "bundle.npz").is_file():
        print("note: no bundle carried (--bundle): the training step will fail on the GPU host", file=sys.stderr)
    tree, carry = tree_bytes({WEIGHTS}), folder_bytes(CARRY)
    for name, size in (
        ("working tree without the bundled weights", tree),
        ("wheels", folder_bytes(CARRY / "wheels")),
        ("seed", folder_bytes(CARRY / "seed")),
        ("bundle", (CARRY / "bundle.npz").stat().st_size if (CARRY / "bundle.npz").is_file() else 0),
    ):
        print(f"{name:42s} {size / 2**20:6.1f} MiB")
    total = tree + carry
    print(f"{'the call in all':42s} {total / 2**20:6.1f} MiB of {LIMIT_BYTES / 2**20:.0f}")
    print(
        f"\nbefore the call:  git rm -q --cached {WEIGHTS} && echo /{WEIGHTS} >> .git/info/exclude\n"
        f'the call:         bench/gpu.sh "$OUT"   (carry: .carry)\n'
        f"after the call:   git reset -q {WEIGHTS} && sed -i '\\#^/{WEIGHTS}$#d' .git/info/exclude"
    )
    if total > LIMIT_BYTES:
        print(
            f"error: the call would carry {total / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB limit",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
