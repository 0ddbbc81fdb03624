# Three targets (BuildKit: `DOCKER_BUILDKIT=1`, the default since Docker 23):
#   docker build --target api        -t shears-api .         # no torch: small, starts fast
#   docker build --target worker     -t shears-worker .      # CUDA torch + the engine (GPU hosts)
#   docker build --target worker-cpu -t shears-worker-cpu .  # CPU torch + the engine
# Base images are build arguments with public defaults; where no registry is reachable,
# deploy/base-images.sh builds local equivalents (PYTHON_IMAGE=shears-local/python:3.11-slim).
# The CPU worker installs a torch wheel found in deploy/wheels/ (e.g. `pip download
# torch==2.13.0 --no-deps -d deploy/wheels`), else the CPU build from download.pytorch.org.
# A proxy's CA certificate: `--secret id=extra_ca,src=<pem>`; it is used by pip during the
# build and never stored in a layer.
ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# pip trusts the system CAs plus the optional extra_ca secret (a proxy that re-signs TLS).
RUN printf '#!/bin/sh\nset -e\nbundle=/etc/ssl/certs/ca-certificates.crt\nif [ -s /run/secrets/extra_ca ]; then cat "$bundle" /run/secrets/extra_ca > /tmp/ca.pem; export PIP_CERT=/tmp/ca.pem; fi\npip "$@"\nrm -f /tmp/ca.pem\n' \
      > /usr/local/bin/pip-ca && chmod +x /usr/local/bin/pip-ca \
 && useradd --system --uid 10001 --create-home shears
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./

FROM base AS api
# The API's dependencies only (constraints.txt pins them), then the code: code edits reuse the layer.
RUN --mount=type=secret,id=extra_ca mkdir -p service worker && touch service/__init__.py worker/__init__.py \
 && pip-ca install -c constraints.txt .
COPY service ./service
COPY worker ./worker
RUN --mount=type=secret,id=extra_ca pip-ca install --no-deps -c constraints.txt . && mkdir -p /var/lib/shears && chown shears /var/lib/shears
USER shears
EXPOSE 8000
# Shears' protocol (service/edge.py): header size/time limits, the connection cap, the receive buffer.
CMD ["uvicorn", "service.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--timeout-keep-alive", "30", "--http", "service.edge:GuardedHttpToolsProtocol"]

FROM base AS worker-cpu
# The wheel is bind-mounted from the context, so its 190 MB never land in a layer.
RUN --mount=type=secret,id=extra_ca --mount=type=bind,source=deploy/wheels,target=/tmp/wheels \
    set -e; wheel=$(ls /tmp/wheels/torch-2.13.0*.whl 2>/dev/null | head -1); \
    if [ -n "$wheel" ]; then pip-ca install "$wheel"; \
    else pip-ca install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; fi
RUN --mount=type=secret,id=extra_ca mkdir -p service worker && touch service/__init__.py worker/__init__.py \
 && pip-ca install -c constraints.txt ".[worker]" \
 && pip-ca install --no-deps -c constraints.txt onnx2torch
COPY service ./service
COPY worker ./worker
RUN --mount=type=secret,id=extra_ca pip-ca install --no-deps -c constraints.txt . && mkdir -p /var/lib/shears && chown shears /var/lib/shears
USER shears
CMD ["celery", "-A", "worker.celery_app", "worker", "--concurrency", "1", "--queues", "shears", "--loglevel", "INFO"]

FROM ${CUDA_IMAGE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
COPY worker ./worker
# The CUDA build of the pinned torch version, then the rest under the same constraints.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
 && grep -v '^torch==' constraints.txt > /tmp/constraints-cuda.txt \
 && pip install -c /tmp/constraints-cuda.txt ".[worker]" \
 && pip install --no-deps -c /tmp/constraints-cuda.txt onnx2torch \
 && useradd --system --uid 10001 shears && mkdir -p /var/lib/shears && chown shears /var/lib/shears
USER shears
CMD ["celery", "-A", "worker.celery_app", "worker", "--concurrency", "1", "--queues", "shears", "--loglevel", "INFO"]
