# syntax=docker/dockerfile:1
# The CLIP zero-shot classification service. Build and run: see docs/deployment.md.
#
#   docker build -t clip-zero-shot .                       # PyTorch's CUDA build (from PyPI)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                -t clip-zero-shot:cpu .                   # CPU-only PyTorch: a much smaller image
#
# The builder installs the project into a virtual environment with scripts/install.sh, the same
# script the README's install runs; the runtime stage is the slim base image plus that environment.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Empty: pip's default index (PyPI), whose Linux x86_64 PyTorch wheel is the CUDA build.
ARG TORCH_INDEX_URL=""
ARG TORCH_SPEC=torch==2.13.0
ENV VENV=/opt/venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# PyTorch first, in a layer of its own: it is gigabytes and changes far less often than the code.
COPY scripts/install.sh scripts/install.sh
RUN bash scripts/install.sh --torch-only
COPY . .
RUN bash scripts/install.sh

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 clip \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --create-home --home-dir /home/clip clip
# The environment alone: the package, its bundled checkpoint and the clip-serve script live in it.
COPY --from=builder /opt/venv /opt/venv
# CLIP_COMPILE=off: torch.compile builds C++ (on a GPU, Triton builds C too) and this stage has no
# compiler, so `on` would stop start-up and `auto` would warn and run eager at every start. Set it to
# auto or on only in an image you add a compiler to (docs/service.md, "A compiled tower").
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CLIP_HOST=0.0.0.0 \
    CLIP_PORT=8000 \
    CLIP_COMPILE=off
# Numeric, so an orchestrator can tell it is not root (Kubernetes' runAsNonRoot) without /etc/passwd.
USER 10001:10001
WORKDIR /home/clip
EXPOSE 8000
# Healthy = model loaded and warmed up. The slim image has no curl, so Python asks; a non-200
# answer raises, and the exit status 1 marks the container unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CLIP_PORT', '8000'), timeout=4)"]
# On SIGTERM clip-serve drains requests in flight for CLIP_DRAIN_SECONDS (30), then exits: stop the
# container with more time than that (docker run --stop-timeout 40; Compose's stop_grace_period is 40s).
CMD ["clip-serve"]
