#!/usr/bin/env bash
# The one install command. The README's set-up, the Docker image and the runtime replay all call it,
# so what the image runs is what a local install runs.
#
#   bash scripts/install.sh              # runtime: PyTorch, then `pip install .`
#   bash scripts/install.sh --dev        # development: PyTorch, then `pip install -e .[dev]`
#   bash scripts/install.sh --torch-only # PyTorch alone (the Dockerfile caches it in its own layer)
#   bash scripts/install.sh --dry-run    # print the commands instead of running them
#
# Environment:
#   VENV             the virtual environment to install into; created if missing
#                    (default: the active one, $VIRTUAL_ENV, else .venv in the repository)
#   PYTHON           the interpreter that creates it (default: python3)
#   TORCH_SPEC       the PyTorch requirement, pinned (default: torch==2.13.0)
#   TORCH_INDEX_URL  the package index PyTorch comes from (default: pip's own, i.e. PyPI, whose Linux
#                    x86_64 wheel is the CUDA build); https://download.pytorch.org/whl/cpu for CPU only
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-${VIRTUAL_ENV:-$root/.venv}}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
torch_index_url="${TORCH_INDEX_URL:-}"

mode=runtime
dry_run=0
for argument in "$@"; do
    case "$argument" in
        --dev) mode=dev ;;
        --torch-only) mode=torch ;;
        --dry-run) dry_run=1 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option '$argument' (see --help)" >&2; exit 2 ;;
    esac
done

case "$torch_spec" in
    torch==*) ;;
    *) echo "install.sh: TORCH_SPEC must pin one release (torch==X.Y.Z), not '$torch_spec':" \
            "an open range makes pip pull a multi-GB CUDA build" >&2; exit 2 ;;
esac

run() {
    echo "+ $*"
    if [ "$dry_run" = 0 ]; then "$@"; fi
}

if [ ! -x "$venv/bin/python" ]; then
    run "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install)

if [ -n "$torch_index_url" ]; then
    run "${pip[@]}" --index-url "$torch_index_url" "$torch_spec"
else
    run "${pip[@]}" "$torch_spec"
fi

case "$mode" in
    dev) run "${pip[@]}" -e "$root[dev]" ;;
    runtime) run "${pip[@]}" "$root" ;;
    torch) ;;
esac
