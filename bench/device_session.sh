#!/usr/bin/env bash
# One lease of a CUDA machine, in one command of at most nine minutes (the device tool's run):
#
#   bash bench/device_session.sh          # in the repository root, wheels for the missing packages in .whl/
#
# 1. the environment (nvidia-smi, torch, CUDA);
# 2. ProbMask vs dense training step on the GPU, alone on the device (bench/engine_gpu.py);
# 3. side by side, sharing the GPU: the engine's tests on CUDA (Settings.device = auto picks it in
#    every job pipeline test), CPU/GPU training parity (bench/gpu_parity.py) and the unstructured
#    job grid on shapes32 ResNet-20 (bench/quality.py --device cuda: ProbMask's default job against
#    prune_weights + finetune, 90/95/98 %, three seeds, one process each).
# Everything lands in $OUT (JSON files and one tarball of logs and grid results). Each step has its
# own time limit, so one hang costs only its share.
set -u
OUT=${OUT:-/tmp/shears-device-out}
mkdir -p "$OUT" /tmp/shears-device/logs /tmp/shears-device/grid
LOGS=/tmp/shears-device/logs
GRID=/tmp/shears-device/grid
GRID_LIMIT_S=${GRID_LIMIT_S:-380}
GRID_DEVICE=${GRID_DEVICE:-cuda}           # the self-test: GRID_DEVICE=cpu GRID_BUDGET=quick GRID_SEEDS=0 ...
GRID_BUDGET=${GRID_BUDGET:-image-pmjob}
GRID_SEEDS=${GRID_SEEDS:-0 1 2}
GRID_SPARSITIES=${GRID_SPARSITIES:-0.98 0.95 0.9}
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

timeout 60 python3 bench/engine_gpu.py --arch resnet32 vgg19_bn --batch 128 --steps 50 --ratios 0.5 \
  --json "$OUT/engine_gpu.json" > "$LOGS/engine_gpu.log" 2>&1
stamp "engine_gpu rc $?"

for sparsity in $GRID_SPARSITIES; do
  for seed in $GRID_SEEDS; do
    extra=""
    [ "$sparsity" = 0.98 ] && extra="--pm-distilled"
    timeout "$GRID_LIMIT_S" python3 bench/quality.py --budget "$GRID_BUDGET" --datasets shapes32 --arch resnet20 --width 0.5 \
      --parts unstructured_job --sparsities "$sparsity" --threads 1 --seeds "$seed" --device "$GRID_DEVICE" $extra \
      --out "$GRID/image-pmjob-$sparsity-seed$seed.json" > "$LOGS/grid-$sparsity-seed$seed.log" 2>&1 &
  done
done
stamp "grid started (${GRID_LIMIT_S} s per process at most)"

timeout 60 python3 bench/gpu_parity.py --device cuda --json "$OUT/parity.json" > "$LOGS/parity.log" 2>&1
stamp "parity rc $?"
timeout 280 python3 -m pytest -q -p no:cacheprovider -p no:randomly -n 4 tests/worker > "$LOGS/engine_tests.log" 2>&1
stamp "engine tests rc $? ($(tail -1 "$LOGS/engine_tests.log"))"

wait
stamp "grid done"
tail -3 "$LOGS"/grid-*.log > "$LOGS/grid-tails.txt" 2>&1
tar czf "$OUT/device_session.tar.gz" -C /tmp/shears-device logs grid
cp "$LOGS/session.log" "$OUT/session.log"
cat "$LOGS/session.log"
