#!/usr/bin/env bash
# CI step for data that stay in object storage: register the dataset by reference (nothing is
# uploaded; the server must allow the prefix in SHEARS_DATASET_REFERENCE_PREFIXES), upload the
# model, post a JSON job naming both, poll, download, gate. Needs curl and python3 with PyYAML.
#   DATASET_URI=s3://datasets/team-a/pets/ SPEC=shears-job.yaml bash ci-reference.sh
# With the CLI: shears submit model.onnx --dataset "$DATASET_URI" --spec "$SPEC" --wait --download pruned/
set -euo pipefail
: "${SHEARS_URL:?set SHEARS_URL}" "${SHEARS_API_KEY:?set SHEARS_API_KEY}" "${DATASET_URI:?set DATASET_URI}"
SPEC="${SPEC:-shears-job.yaml}"
auth="Authorization: Bearer $SHEARS_API_KEY"
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
ready() {  # wait until a model or dataset is inspected; print its error and fail when invalid
  while :; do
    curl -sS --fail-with-body -H "$auth" "$SHEARS_URL/v1/$1/$2" > item.json
    case "$(field '["status"]' < item.json)" in
      ready) return 0 ;;
      invalid) cat item.json; return 1 ;;
    esac
    sleep 2
  done
}

body=$(python3 -c 'import json,sys; print(json.dumps({"uri": sys.argv[1]}))' "$DATASET_URI")
dataset=$(curl -sS --fail-with-body -H "$auth" -H 'Content-Type: application/json' -d "$body" \
          "$SHEARS_URL/v1/datasets" | field '["id"]')
model=$(curl -sS --fail-with-body -H "$auth" -F file=@model.onnx "$SHEARS_URL/v1/models" | field '["id"]')
ready datasets "$dataset"
ready models "$model"
echo "dataset $dataset ($DATASET_URI), model $model"

spec=$(python3 -c 'import json,sys,yaml; s=yaml.safe_load(open(sys.argv[1])) or {}
s.update(model_id=sys.argv[2], dataset_id=sys.argv[3]); print(json.dumps(s))' "$SPEC" "$model" "$dataset")
job=$(curl -sS --fail-with-body -H "$auth" -H 'Content-Type: application/json' -d "$spec" \
      "$SHEARS_URL/v1/jobs" | field '["id"]')
echo "job $job"
while :; do
  status=$(curl -sS --fail-with-body -H "$auth" "$SHEARS_URL/v1/jobs/$job" | field '["status"]')
  case "$status" in succeeded|failed|cancelled) break ;; esac
  sleep 2
done
curl -sS -H "$auth" "$SHEARS_URL/v1/jobs/$job" > job.json
[ "$status" = succeeded ] || { cat job.json; exit 1; }
mkdir -p pruned
for name in $(python3 -c 'import json; print(" ".join(a["name"] for a in json.load(open("job.json"))["artifacts"]))'); do
  curl -sS --fail-with-body -L -H "$auth" -o "pruned/$name" "$SHEARS_URL/v1/jobs/$job/artifacts/$name"
done
passed=$(field '["result"]["acceptance"]["passed"]' < job.json)
echo "acceptance gate passed: $passed"
[ "$passed" = True ]
