#!/usr/bin/env bash
# Every pending GPU measurement in one call, results written under $OUT. Stages (STAGES, in order):
#   checks    benchmarks/device_checks.py: CUDA against CPU for the device data and the
#             compiled step with its non-finite skip (seconds)
#   pipeline  benchmarks/input_pipeline.py: JPEG input pipeline alone, CPU DataLoader against
#             decoding on the GPU, on generated ImageNet-sized JPEGs (about a minute)
#   step      benchmarks/train_gpu.py: the training-step table (torchvision eager and compiled,
#             timm, ours eager and fast path; V1, V2, V3-Large and V4-Conv-S at 224, bf16, batch 256), the
#             Fashion-MNIST model end to end against its bare compiled step, and the profile
#             (several minutes, most of it compiling)
#   recipe    the README's 95.5% recipe (width 1.4, 120 epochs, batch 256) on the fast path,
#             stopped after LIMIT seconds (default 540): its own call, it needs all of one
# Fashion-MNIST is read from $MOBILENETS_DATA (default runs/data, git-ignored): copy the four
# .gz files to runs/data/fashion-mnist/ and carry runs/data to the GPU machine.
#
#   OUT=results STAGES="checks pipeline step" bash benchmarks/gpu_session.sh
#   OUT=results STAGES=recipe bash benchmarks/gpu_session.sh
#   DEVICE=cpu QUICK=1 OUT=/tmp/out bash benchmarks/gpu_session.sh   (a dry run on a CPU)
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/runs/gpu-out}
STAGES=${STAGES:-checks pipeline step}
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-540}
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export MOBILENETS_DATA=${MOBILENETS_DATA:-$ROOT/runs/data}
mkdir -p "$OUT"
{
    date -u
    nvidia-smi -L 2>/dev/null || true
    lscpu | grep -E "Model name|^CPU\(s\)"
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true
} | tee "$OUT/machine.txt"

# QUICK=1: tiny sizes, to check on a CPU that every stage runs
if [ "${QUICK:-0}" = 1 ]; then
    STEP_FLAGS="--device $DEVICE --resolution 32 --batch 4 --steps 2 --repeats 1 --amp off \
        --data synthetic:64 --epochs 1 --fmnist-batch 16"
    PIPE_FLAGS="--device $DEVICE --synthetic 16 --batch 8 --workers 1 --rounds 1"
    RECIPE_FLAGS="--data synthetic:256 --epochs 1 --batch-size 32"
else
    STEP_FLAGS="--device $DEVICE"
    PIPE_FLAGS="--device $DEVICE --synthetic 4096 --workers $(($(nproc) - 2))"
    RECIPE_FLAGS="--data fashion-mnist --epochs 120 --batch-size 256"
fi

failed=""
for stage in $STAGES; do
    echo "== $stage"
    case $stage in
    checks) $PY "$ROOT/benchmarks/device_checks.py" --device "$DEVICE" | tee "$OUT/device_checks.txt" ;;
    # shellcheck disable=SC2086  # the flags are words
    pipeline) $PY "$ROOT/benchmarks/input_pipeline.py" $PIPE_FLAGS | tee "$OUT/input_pipeline.md" ;;
    # shellcheck disable=SC2086
    step) $PY "$ROOT/benchmarks/train_gpu.py" $STEP_FLAGS --markdown "$OUT/train_gpu.md" ;;
    recipe)
        rm -rf "$OUT/recipe"
        # shellcheck disable=SC2086
        timeout "$LIMIT" $PY -m mobilenets train --model mobilenet_v2 --preset modern --alpha 1.4 \
            --augment basic --lr 0.2 --compile --device-data on --device "$DEVICE" --no-progress \
            --out "$OUT/recipe" $RECIPE_FLAGS 2>&1 | tee "$OUT/recipe.log"
        $PY "$ROOT/benchmarks/fashion_mnist_recipe.py" "$OUT/recipe" >"$OUT/recipe.md" 2>&1
        head -n 20 "$OUT/recipe.md"
        rm -rf "$OUT/recipe/state" # the resume state is not a result
        ;;
    *) echo "unknown stage $stage (allowed: checks pipeline step recipe)" >&2 && exit 2 ;;
    esac
    status=$?
    # a failed stage is reported and the next one still runs: one call must bring back all it can
    [ $status = 0 ] || failed="$failed $stage"
done
if [ -n "$failed" ]; then
    echo "failed:$failed" | tee "$OUT/failed.txt"
    exit 1
fi
