#!/usr/bin/env bash
# Rewrite constraints.txt from what .venv has installed (run after changing pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Every direct and transitive dependency, pinned. Regenerate with scripts/freeze-constraints.sh."
  echo "# torch is the CPU wheel (2.13.0+cpu here); any other torch pulls gigabytes of CUDA packages."
  .venv/bin/pip freeze --exclude-editable | grep -viE '^(shears|torch)==' | sort -f
  echo "torch==2.13.0"
} > constraints.txt
