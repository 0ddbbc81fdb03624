#!/usr/bin/env bash
# Install everything Shears needs into .venv (idempotent; skips when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv

stamp=.venv/.shears-installed
want=$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing Shears and its pinned dependencies into .venv ..."
  # torch==2.13.0 is pinned in constraints.txt: the CPU wheel here, never a CUDA download.
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[worker,test]"
  # onnx2torch declares torchvision, whose PyPI build is CUDA-only and breaks the CPU torch;
  # it only needs it for NMS/RoiAlign, which worker/io guards.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -c constraints.txt onnx2torch
  echo "$want" > "$stamp"
fi
