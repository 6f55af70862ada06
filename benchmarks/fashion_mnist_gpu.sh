#!/usr/bin/env bash
# Fashion-MNIST recipe runs on one GPU machine, one after another, packed into $OUT.
#
# Every run is MobileNetV2 small-input (width 1.0 unless named -a14), --preset modern, batch 128,
# lr 0.1, bf16 autocast:
#   recipe-30: the preset's own augmentation (TrivialAugment + random erasing 0.25), 30 epochs
#   basic-30:  --augment basic (pad-and-crop + flip) + random erasing 0.25, 30 epochs
#   basic-60:  the same for 60 epochs
#   basic-60-a14: basic-60 with width multiplier 1.4 (1.94 times the MACs)
#   a14-60-b256: basic-60-a14 at batch 256 and lr 0.2 (twice both): half as many steps
#   a14-120-b256: a14-60-b256 for 120 epochs (the published weights' recipe)
#   a14-ft20:   a second cosine cycle: 20 epochs at width 1.4, batch 128, lr 0.02, started
#               (--weights) from a14-60-b256's final weights, given as FT_WEIGHTS=FILE
# Name the runs to make as arguments (default: a14-120-b256). Their results are in
# benchmarks/results/fashion_mnist_recipe.md. On an H200, a14-60-b256 trained at 2,600 to 5,800
# images/s, 10 to 23 s an epoch; a 60-epoch run needs more than the default LIMIT of 540 s:
# raise LIMIT, or resume the state it leaves (below) elsewhere. Runs go one at a time with 14
# loader workers each: three runs side by side on one H200 trained at 760 images/s each.
# Before them, two one-epoch smoke runs check the CUDA paths that a CPU machine cannot: fp16
# with the grad scaler, and the detector in bf16.
#
# Each run's final weights come back under $OUT as NAME.last.safetensors.part-aa, -ab, ...
# (`cat` them back together); a run stopped by LIMIT leaves its last saved state instead, as
# NAME.state.pt.part-*, to be resumed elsewhere with `mobilenets train --out DIR --resume`.
# SMOKE=0 skips the smoke runs.
#
#   OUT=results bash benchmarks/fashion_mnist_gpu.sh [NAME...]
#   (NAME: basic-30 recipe-30 basic-60 basic-60-a14 a14-60-b256 a14-120-b256 a14-ft20)
#   DATA=synthetic:256 DEVICE=cpu EPOCHS=1 EPOCHS_LONG=1 ... for a dry run
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/runs/gpu-out}
RUNS=${RUNS:-/tmp/fmnist-runs}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-fashion-mnist}
LIMIT=${LIMIT:-540}  # seconds each run may take before it is stopped
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export MOBILENETS_DATA=${MOBILENETS_DATA:-$ROOT/.data}
mkdir -p "$OUT" "$RUNS"

{
    date -u
    nvidia-smi -L 2>/dev/null
    lscpu | grep -E "Model name|^CPU\(s\)"
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} | tee "$OUT/machine.txt"

smoke() {
    local name=$1
    shift
    echo "== smoke $name"
    if ! "$@" --device "$DEVICE" --epochs 1 --workers 2 --no-progress --out "$RUNS/$name" \
        >"$RUNS/$name.log" 2>&1; then
        tail -n 30 "$RUNS/$name.log"
        exit 1
    fi
    tail -n 3 "$RUNS/$name.log"
}
if [ "${SMOKE:-1}" != 0 ]; then
    smoke smoke-fp16 $PY -m mobilenets train --data synthetic:512 --amp fp16
    smoke smoke-detect-bf16 $PY -m mobilenets detect train --data synthetic-shapes:128 \
        --alpha 0.35 --resolution 128 --batch-size 16 --amp bf16
    cat "$RUNS"/smoke-*.log >"$OUT/smoke.log"
fi

ALLOWED="recipe-30 basic-30 basic-60 basic-60-a14 a14-60-b256 a14-120-b256 a14-ft20"
flags() {
    case $1 in
    recipe-30) echo --epochs "${EPOCHS:-30}" ;;
    basic-30) echo --epochs "${EPOCHS:-30}" --augment basic ;;
    basic-60) echo --epochs "${EPOCHS_LONG:-60}" --augment basic ;;
    basic-60-a14) echo --epochs "${EPOCHS_LONG:-60}" --augment basic --alpha 1.4 ;;
    a14-60-b256) echo --epochs "${EPOCHS_LONG:-60}" --augment basic --alpha 1.4 --batch-size 256 \
        --lr 0.2 ;;
    a14-120-b256) echo --epochs "${EPOCHS_LONG:-120}" --augment basic --alpha 1.4 \
        --batch-size 256 --lr 0.2 ;;
    a14-ft20) echo --epochs "${EPOCHS:-20}" --augment basic --alpha 1.4 --lr 0.02 --weights \
        "${FT_WEIGHTS:?a14-ft20 starts from a14-60-b256/last.safetensors: set FT_WEIGHTS}" ;;
    *) echo "unknown run $1 (allowed: $ALLOWED)" >&2 && exit 2 ;;
    esac
}
NAMES=${*:-a14-120-b256}
for name in $NAMES; do flags "$name" >/dev/null || exit 2; done

for name in $NAMES; do
    # shellcheck disable=SC2046  # the flags are words
    echo "== run $name: $(flags "$name")"
    timeout "$LIMIT" $PY -m mobilenets train --data "$DATA" --model mobilenet_v2 --preset modern \
        --batch-size 128 --lr 0.1 --device "$DEVICE" --workers "${WORKERS:-14}" --no-progress \
        --out "$RUNS/$name" $(flags "$name") >"$RUNS/$name.log" 2>&1 &
    start=$(date +%s)
    while [ -n "$(jobs -r)" ]; do
        sleep 30
        metrics=$RUNS/$name/metrics.jsonl
        [ -f "$metrics" ] && echo "t+$(($(date +%s) - start))s $name: $(wc -l <"$metrics") epochs," \
            "$(tail -n 1 "$metrics" | cut -c1-160)"
    done
    wait
done

for name in $NAMES; do
    echo "== $name (exit log tail)"
    tail -n 4 "$RUNS/$name.log"
    $PY "$ROOT/benchmarks/fashion_mnist_recipe.py" "$RUNS/$name" >"$RUNS/$name.md" 2>&1
    head -n 6 "$RUNS/$name.md"
    tar czf "$OUT/$name.tar.gz" -C "$RUNS" --exclude state --exclude '*.safetensors' \
        "$name" "$name.log" "$name.md"
    # Files come back in pieces of at most 16 MiB: the final weights, or the state to resume.
    if [ -f "$RUNS/$name/eval.json" ]; then
        split -b 15M "$RUNS/$name/last.safetensors" "$OUT/$name.last.safetensors.part-"
    elif [ -f "$RUNS/$name/state/last.pt" ]; then
        split -b 15M "$RUNS/$name/state/last.pt" "$OUT/$name.state.pt.part-"
    fi
done
