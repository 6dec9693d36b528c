#!/usr/bin/env bash
# The GPU command: every GPU figure this project needs, in one call (346-360 s on an H200; the steps'
# caps, bench/gpu/run.py, add up to 540 s).
#
#   bench/gpu.sh OUT_DIR              # on a GPU host, after bench/gpu/prepare.py on the CPU host
#   bench/gpu.sh OUT_DIR --dry-run    # the same steps on the CPU, tiny sizes, about 80 s on 2 cores
#   bench/gpu.sh OUT_DIR --only tower engine
#
# Steps, caps and outputs: bench/gpu/run.py. On a host without the server's packages (a lent GPU
# host has torch but no FastAPI), the wheels that bench/gpu/prepare.py put in .carry/wheels are
# installed offline into a folder put on PYTHONPATH ahead of the host's site-packages, so the
# host's own torch stays (the device tool's documented way; it needs no venv or ensurepip there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if ! "$python" -c "import fastapi, uvicorn, pydantic_settings, multipart" 2>/dev/null; then
    wheels="$root/.carry/wheels"
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "bench/gpu.sh: $python lacks the server's packages and $wheels has no wheels: run bench/gpu/prepare.py first" >&2
        exit 2
    fi
    site="${TMPDIR:-/tmp}/clip-gpu-site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --upgrade \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" "$root/bench/gpu/run.py" "$@"
