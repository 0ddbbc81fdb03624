# syntax=docker/dockerfile:1
# Two targets: `api` (no torch: small, starts fast) and `worker` (CUDA torch + the engine).
#   docker build --target api -t shears-api .
#   docker build --target worker -t shears-worker .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
COPY worker ./worker

FROM base AS api
# The API's dependencies only; constraints.txt pins them.
RUN pip install --no-cache-dir -c constraints.txt . \
 && useradd --system --uid 10001 shears
USER shears
EXPOSE 8000
CMD ["uvicorn", "service.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--timeout-keep-alive", "30"]

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
COPY worker ./worker
# The CUDA build of the pinned torch version, then the rest under the same constraints.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 \
 && grep -v '^torch==' constraints.txt > /tmp/constraints-cuda.txt \
 && pip install --no-cache-dir -c /tmp/constraints-cuda.txt ".[worker]" \
 && pip install --no-cache-dir --no-deps -c /tmp/constraints-cuda.txt onnx2torch \
 && useradd --system --uid 10001 shears
USER shears
CMD ["celery", "-A", "worker.celery_app", "worker", "--concurrency", "1", "--queues", "shears", "--loglevel", "INFO"]
