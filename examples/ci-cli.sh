#!/usr/bin/env bash
# CI step with the shears CLI: prune model.onnx on data.npz, download the artifacts to pruned/.
# Exit code: 0 = job succeeded and the acceptance gate passed; 1 = job failed; 2 = gate failed.
set -euo pipefail
: "${SHEARS_URL:?set SHEARS_URL}" "${SHEARS_API_KEY:?set SHEARS_API_KEY}"
shears submit model.onnx --dataset data.npz --spec shears-job.yaml \
  --idempotency-key "${CI_PIPELINE_ID:-local}-prune" --wait --download pruned/
ls pruned/
