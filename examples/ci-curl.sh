#!/usr/bin/env bash
# CI step with plain curl: one multipart request (model + dataset + spec), poll, download.
set -euo pipefail
: "${SHEARS_URL:?set SHEARS_URL}" "${SHEARS_API_KEY:?set SHEARS_API_KEY}"
auth="Authorization: Bearer $SHEARS_API_KEY"
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

spec=$(python3 -c 'import json,sys,yaml; print(json.dumps(yaml.safe_load(open("shears-job.yaml"))))' 2>/dev/null \
       || echo '{"pipeline": [{"prune_channels": {"ratio": 0.5}}, {"finetune": {"epochs": 3}}]}')
job=$(curl -sS --fail-with-body -H "$auth" -F model=@model.onnx -F dataset=@data.npz -F "spec=$spec" \
      "$SHEARS_URL/v1/jobs/upload" | field '["id"]')
echo "job $job"
while :; do
  status=$(curl -sS --fail-with-body -H "$auth" "$SHEARS_URL/v1/jobs/$job" | field '["status"]')
  case "$status" in succeeded|failed|cancelled) break ;; esac
  sleep 2
done
curl -sS -H "$auth" "$SHEARS_URL/v1/jobs/$job" > job.json
[ "$status" = succeeded ] || { cat job.json; exit 1; }
mkdir -p pruned
for name in model.onnx model.torchscript.pt report.json report.html; do
  curl -sS --fail-with-body -L -H "$auth" -o "pruned/$name" "$SHEARS_URL/v1/jobs/$job/artifacts/$name"
done
passed=$(field '["result"]["acceptance"]["passed"]' < job.json)
echo "acceptance gate passed: $passed"
[ "$passed" = True ]
