#!/usr/bin/env bash
# One lease of a CUDA machine, in one command of at most nine minutes (the device tool's run):
#
#   bash bench/device_session.sh                 # in the repository root; wheels for the missing packages in .whl/
#   BASE=.ab_old bash bench/device_session.sh    # also time BASE, a copy of an earlier tree's bench/, worker/
#                                                # and service/, on the same GPU (an A/B in one lease)
#
# 1. the environment (nvidia-smi, torch, CUDA);
# 2. ProbMask vs dense training step on the GPU, alone on the device (bench/engine_gpu.py): BASE, then this tree;
# 3. the engine's tests on CUDA (Settings.device = auto picks it in every job pipeline test) and CPU/GPU
#    training parity (bench/gpu_parity.py);
# 4. one default unstructured job end to end, alone, timed (bench/quality.py --device cuda: shapes32
#    ResNet-20 w0.5, [probmask 0.98, finetune] and [prune_weights 0.98, finetune], seed 0): this tree, then BASE.
# Everything lands in $OUT (JSON files, logs). Each step has its own time limit, so one hang costs only its share.
set -u
OUT=${OUT:-/tmp/shears-device-out}
LOGS=$OUT/logs
mkdir -p "$LOGS"
BASE=${BASE:-}
JOB_LIMIT_S=${JOB_LIMIT_S:-200}
stamp() { echo "# $(date -u +%H:%M:%S) $*" | tee -a "$LOGS/session.log"; }

stamp start
WHEELS=${WHEELS:-.whl}  # packages the device image lacks (none: the local self-test)
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    > "$LOGS/pip.log" 2>&1 || { stamp "wheel install failed"; tail -20 "$LOGS/pip.log"; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
python3 -c "import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
  2>&1 | tee "$LOGS/env.txt"
python3 -c "import service.core.spec, worker.pruning.stages, onnx2torch, torch_pruning; print('imports ok')" 2>&1 | tee -a "$LOGS/env.txt"
stamp "env done"

step_bench() {  # $1: tree (. or BASE), $2: label
  for cfg in "resnet32 vgg19_bn --batch 128" "resnet20 --batch 32"; do
    local tag
    tag=$(echo "$cfg" | tr -d ' -' | tr '_' '-')
    # shellcheck disable=SC2086
    timeout 90 python3 "$1/bench/engine_gpu.py" --arch $cfg --steps 50 --ratios 0.5 \
      --json "$OUT/engine_gpu-$2-$tag.json" > "$LOGS/engine_gpu-$2-$tag.log" 2>&1
    stamp "engine_gpu $2 $cfg rc $?"
  done
}
[ -n "$BASE" ] && step_bench "$BASE" base
step_bench . head

timeout 60 python3 bench/gpu_parity.py --device cuda --json "$OUT/parity.json" > "$LOGS/parity.log" 2>&1
stamp "parity rc $?"
timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:randomly -n 8 tests/worker \
  --ignore=tests/worker/test_references.py --ignore=tests/worker/test_corpus.py > "$LOGS/engine_tests.log" 2>&1
stamp "engine tests rc $? ($(tail -1 "$LOGS/engine_tests.log"))"

job() {  # $1: tree, $2: label
  local start=$SECONDS
  timeout "$JOB_LIMIT_S" python3 "$1/bench/quality.py" --budget image-pmjob --datasets shapes32 --arch resnet20 \
    --width 0.5 --parts unstructured_job --sparsities 0.98 --threads 1 --seeds 0 --device cuda \
    --out "$OUT/job-$2.json" > "$LOGS/job-$2.log" 2>&1
  stamp "job $2 rc $? in $((SECONDS - start)) s"
}
job . head
[ -n "$BASE" ] && job "$BASE" base
stamp done
