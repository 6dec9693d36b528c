#!/usr/bin/env bash
# Replays the Docker image's runtime stage outside Docker, as far as a machine without a Docker
# engine allows, and exits non-zero on any failure:
#   1. a fresh virtual environment and the Dockerfile's install step (scripts/install.sh, runtime
#      mode) with the local CPU build of PyTorch;
#   2. the image's CMD started with the image's ENV (read from the Dockerfile's runtime stage) and
#      nothing else from this shell, except the address: loopback and a free port, not 0.0.0.0:8000;
#      the bundled checkpoint, or a tiny one made by the library's save path if none is bundled yet;
#   3. /readyz awaited, then the image's HEALTHCHECK command, the README's curl commands and one
#      real multipart POST /classify (a Pillow-made PNG, two labels: 200, probabilities sum to 1);
#   4. SIGTERM, and the server must shut down gracefully.
#
#   bash scripts/replay_runtime.sh
#
# Environment: PYTHON creates the fresh environment (default python3); DEV_PYTHON, an environment
# with the development install (default: the active one, else .venv, else python3), makes the tiny
# checkpoint; KEEP=1 keeps the work directory.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [ -z "${DEV_PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then DEV_PYTHON="$VIRTUAL_ENV/bin/python"
    elif [ -x "$root/.venv/bin/python" ]; then DEV_PYTHON="$root/.venv/bin/python"
    else DEV_PYTHON=python3; fi
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/replay-runtime.XXXXXX")"
venv="$work/venv"
server_pid=""

cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "replay: work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() { echo "replay: FAILED: $*" >&2; if [ -f "$work/server.log" ]; then tail -n 40 "$work/server.log" >&2; fi; exit 1; }
started=$(date +%s)
phase_started=$started
phase() { local now; now=$(date +%s); echo "replay: $1 ($((now - phase_started)) s)"; phase_started=$now; }

# 1. The Dockerfile's install step, with the local CPU PyTorch instead of the CUDA build.
grep -q '^RUN bash scripts/install.sh$' "$root/Dockerfile" || fail "the Dockerfile no longer installs with 'RUN bash scripts/install.sh'"
VENV="$venv" PYTHON="$python" TORCH_SPEC=torch==2.13.0 TORCH_INDEX_URL="" \
    timeout 1200 bash "$root/scripts/install.sh" >"$work/install.log" 2>&1 \
    || { tail -n 40 "$work/install.log" >&2; fail "scripts/install.sh"; }
phase "installed into a fresh virtual environment"

# 2. The image's environment and command, read from the Dockerfile's runtime stage.
dockerfile() { (cd "$root" && "$venv/bin/python" -m tests.deploy.dockerfile "$@"); }
json_words() { "$venv/bin/python" -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$1"; }
mapfile -t image_env < <(dockerfile env | grep -v '^PATH=')
mapfile -t command < <(json_words "$(dockerfile cmd)")
healthcheck="$(dockerfile healthcheck)"
printf '%s\n' "${image_env[@]}" | grep -qx 'CLIP_HOST=0.0.0.0' || fail "the image does not set CLIP_HOST=0.0.0.0"
[ "${#command[@]}" -gt 0 ] || fail "the Dockerfile has no CMD"

checkpoint_env=()
bundled="$(cd "$work" && "$venv/bin/python" -c "import model, pathlib; print(pathlib.Path(model.__file__).parent / 'weights' / 'emoji-clip')")"
if [ -f "$bundled/model.safetensors" ]; then
    echo "replay: serving the bundled checkpoint $bundled"
else
    (cd "$root" && "$DEV_PYTHON" -c "
import sys
from model.convert.minilm import package_dir
from tests.conftest import make_checkpoint
make_checkpoint(sys.argv[1], package_dir() / 'vocab.txt')" "$work/tiny-checkpoint") || fail "making the tiny checkpoint with $DEV_PYTHON"
    checkpoint_env=("CLIP_CHECKPOINT=$work/tiny-checkpoint")
    echo "replay: no bundled checkpoint yet; serving a tiny one through CLIP_CHECKPOINT"
fi
phase "checkpoint chosen"

port="$("$venv/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
mkdir -p "$work/home"
# As the image starts it: only the image's ENV, its CMD found on PATH, a home of its own.
(cd "$work/home" && exec env -i HOME="$work/home" PATH="$venv/bin:/usr/bin:/bin" "${image_env[@]}" \
    "${checkpoint_env[@]}" CLIP_HOST=127.0.0.1 CLIP_PORT="$port" "${command[@]}") >"$work/server.log" 2>&1 &
server_pid=$!
base="http://127.0.0.1:$port"

# 3. Ready, healthy, metrics, and one real classification.
for _ in $(seq 1 240); do
    kill -0 "$server_pid" 2>/dev/null || fail "${command[*]} exited before it was ready"
    status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/readyz" || true)"
    [ "$status" = 200 ] && break
    sleep 0.5
done
[ "$status" = 200 ] || fail "/readyz did not answer 200 within 120 s (last: $status)"
phase "${command[*]} ready on $base"

mapfile -t healthcheck_command < <(json_words "$healthcheck")
(cd "$work/home" && env -i HOME="$work/home" PATH="$venv/bin:/usr/bin:/bin" CLIP_PORT="$port" \
    timeout 30 "${healthcheck_command[@]}") \
    || fail "the image's HEALTHCHECK command failed against the ready server"
curl -fsS --max-time 10 "$base/readyz" >/dev/null || fail "curl /readyz"
curl -fsS --max-time 10 "$base/metrics" | grep -q '^# TYPE ' || fail "curl /metrics: no Prometheus text"

timeout 60 "$venv/bin/python" - "$base" <<'PY' || fail "POST /classify"
import io, json, sys, urllib.request, uuid
from PIL import Image

png = io.BytesIO()
Image.new("RGB", (48, 40), (200, 30, 30)).save(png, format="PNG")
boundary = uuid.uuid4().hex
parts = [("images", "red.png", "image/png", png.getvalue()), ("labels", None, None, b"red"), ("labels", None, None, b"blue")]
body = b""
for name, filename, content_type, data in parts:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
    if content_type:
        body += f"Content-Type: {content_type}\r\n".encode()
    body += b"\r\n" + data + b"\r\n"
body += f"--{boundary}--\r\n".encode()
request = urllib.request.Request(sys.argv[1] + "/classify", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
with urllib.request.urlopen(request, timeout=30) as response:
    assert response.status == 200, response.status
    answer = json.load(response)

def score_lists(node):
    """Every list of {label, probability} objects in the answer: one per image."""
    if isinstance(node, list) and node and all(isinstance(x, dict) and "probability" in x for x in node):
        yield node
    for child in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else []):
        yield from score_lists(child)

lists = [scores for scores in score_lists(answer) if len(scores) == 2]
assert lists, f"no per-label probabilities in the answer: {answer}"
for scores in lists:
    assert [s["label"] for s in scores] in (["red", "blue"], ["blue", "red"]), scores
    total = sum(s["probability"] for s in scores)
    assert abs(total - 1) < 1e-4, f"probabilities sum to {total}"
print("replay: POST /classify -> 200,", ", ".join(f"{s['label']}={s['probability']:.3f}" for s in lists[0]))
PY
phase "healthcheck, /readyz, /metrics and /classify answered"

# 4. Stop as Docker does: SIGTERM, then the server must exit.
kill -TERM "$server_pid"
for _ in $(seq 1 60); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$server_pid" 2>/dev/null && fail "${command[*]} still running 30 s after SIGTERM"
# uvicorn re-raises SIGTERM after its graceful shutdown, so 143 (128 + 15) is a clean exit too;
# its log line tells a graceful shutdown from being killed.
exit_status=0; wait "$server_pid" || exit_status=$?
case "$exit_status" in 0|143) ;; *) fail "${command[*]} exited with status $exit_status after SIGTERM" ;; esac
grep -q "Application shutdown complete" "$work/server.log" || fail "${command[*]} did not shut down gracefully"
server_pid=""
phase "stopped by SIGTERM"
echo "replay: OK in $(( $(date +%s) - started )) s"
