"""Plant each known bug and check that the tests named for it fail (mutation testing, by hand).

    .venv/bin/python tests/mutants/run.py                      # every tests/mutants/*.patch
    .venv/bin/python tests/mutants/run.py 05 tests/mutants/12-request-id-unvalidated.patch

Each ``NN-short-name.patch`` is a ``git diff`` that plants one bug, after a header that says what
the bug is and names the tests that must catch it (pytest node ids; git apply skips the header):

    Planted bug: A label exactly at CLIP_MAX_LABEL_CHARS is refused.
    Test: tests/app/test_limits.py::test_label_length_limit_both_sides

For each patch the script copies the working tree's files (tracked and untracked, not ignored) to
a scratch directory, applies the patch there, runs the named tests there with this Python, and
reports it ``caught`` (the tests failed), ``SURVIVED`` (they passed) or ``ERROR`` (the patch did
not apply, or pytest ended otherwise than pass or fail: nothing collected, a collection error, a
timeout). First it runs every named test on an unpatched copy: a test that fails without its bug
proves nothing. Exits 0 only when every patch is caught. The repository itself is never changed.

An argument selects patches by number prefix or path. To add a mutant: plant the bug in your
checkout, ``git diff > tests/mutants/NN-name.patch``, undo the bug, then put the header on top.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTANTS_DIR = Path(__file__).resolve().parent
TIMEOUT_S = 600  # per pytest run; app tests start two real servers


@dataclass
class Mutant:
    patch: Path
    bug: str
    tests: list[str]

    @property
    def name(self) -> str:
        return self.patch.stem


def read_mutant(patch: Path) -> Mutant:
    bug, tests = "", []
    for line in patch.read_text().splitlines():
        if line.startswith("diff --git"):
            break
        if line.startswith("Planted bug:"):
            bug = line.removeprefix("Planted bug:").strip()
        elif line.startswith("Test:"):
            tests.append(line.removeprefix("Test:").strip())
    if not tests:
        raise SystemExit(f"{patch}: no 'Test: <pytest node id>' line in its header")
    return Mutant(patch, bug, tests)


def select_patches(wanted: list[str]) -> list[Path]:
    patches = sorted(MUTANTS_DIR.glob("*.patch"))
    if not wanted:
        return patches
    chosen = [p for p in patches if any(p.name.startswith(w) or p.resolve() == Path(w).resolve() for w in wanted)]
    if len(chosen) < len(wanted):
        raise SystemExit(f"no patch matches some of {wanted}; known: {', '.join(p.name for p in patches)}")
    return chosen


def copy_working_tree(destination: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = ROOT / relative
        if source.is_file():  # a tracked file deleted in the checkout is skipped
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)


def run_tests(copy: Path, tests: list[str]) -> tuple[int | None, str]:
    """pytest's exit status in ``copy`` (None on timeout) and the tail of its output."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {TIMEOUT_S} s"
    return done.returncode, (done.stdout + done.stderr)[-3000:]


def check_imports_from(copy: Path) -> None:
    """The tests must import the copy's app/ and model/, not the checkout an editable install points at."""
    probe = "import app, model; print(app.__file__); print(model.__file__)"
    env = {**os.environ, "PYTHONPATH": str(copy)}
    found = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=env, capture_output=True, text=True).stdout
    if not all(Path(line).resolve().is_relative_to(copy.resolve()) for line in found.split()):
        raise SystemExit(f"the scratch copy imports app/model from elsewhere:\n{found}")


def scratch_copy(parent: Path, name: str) -> Path:
    copy = parent / name
    copy.mkdir()
    copy_working_tree(copy)
    return copy


def verdict(mutant: Mutant, parent: Path) -> tuple[str, str]:
    copy = scratch_copy(parent, mutant.name)
    try:
        applied = subprocess.run(["git", "apply", str(mutant.patch)], cwd=copy, capture_output=True, text=True)
        if applied.returncode != 0:
            return "ERROR", f"the patch does not apply: {applied.stderr.strip()}"
        status, output = run_tests(copy, mutant.tests)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    if status == 1:
        return "caught", ""
    if status == 0:
        return "SURVIVED", output
    return "ERROR", output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patches", nargs="*", help="patch number prefixes (05) or paths; default: all")
    args = parser.parse_args(argv)
    mutants = [read_mutant(patch) for patch in select_patches(args.patches)]
    every_test = list(dict.fromkeys(test for mutant in mutants for test in mutant.tests))
    with tempfile.TemporaryDirectory(prefix="clip-mutants-") as scratch:
        parent = Path(scratch)
        baseline = scratch_copy(parent, "baseline")
        check_imports_from(baseline)
        print(f"baseline: {len(every_test)} tests on the unpatched code ...", flush=True)
        status, output = run_tests(baseline, every_test)
        if status != 0:
            print(output)
            print("the named tests must pass without their bugs first", file=sys.stderr)
            return 2
        shutil.rmtree(baseline)
        results = []
        for mutant in mutants:
            started = time.monotonic()
            result, output = verdict(mutant, parent)
            results.append(result)
            print(f"{result:8} {mutant.name}  ({time.monotonic() - started:.0f} s)  {mutant.bug}", flush=True)
            if output:
                print("    " + output.strip().replace("\n", "\n    "), flush=True)
    caught = results.count("caught")
    print(f"{caught} of {len(results)} planted bugs caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
