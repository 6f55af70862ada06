#!/usr/bin/env bash
# MobileNetV3-Large, MobileNetV3-Small and MobileNetV2 1.0 on Fashion-MNIST with one short
# schedule, then one `bench` run of the three checkpoints: test top-1 in PyTorch, onnxruntime
# float and int8 (calibrated on 256 training images), and the batch-1 latency of each, 2 threads.
#
# The schedule: small-input variant at 28x28 (one input channel), --preset modern --augment basic,
# ONE epoch at batch 128 (469 steps), lr 0.1, no warmup, cosine to zero. Each run is resumable:
# run the script again after an interrupt and it continues the runs it finds.
#
#   bash benchmarks/fashion_mnist_v3.sh [RUNS_DIR]     (default runs/fmnist-v3)
#   EPOCHS=1 BENCH=0 ... to change the schedule or skip the bench
set -eu
RUNS=${1:-runs/fmnist-v3}
EPOCHS=${EPOCHS:-1}
MOBILENETS=${MOBILENETS:-.venv/bin/mobilenets}
mkdir -p "$RUNS"
for model in mobilenet_v3_small mobilenet_v3_large mobilenet_v2; do
    out="$RUNS/$model"
    if [ -f "$out/last.safetensors" ]; then
        echo "$out: done"
        continue
    fi
    if [ -f "$out/state/last.pt" ]; then
        "$MOBILENETS" train --out "$out" --resume --no-progress
    else
        "$MOBILENETS" train --out "$out" --model "$model" --data fashion-mnist --small-input \
            --resolution 28 --preset modern --augment basic --epochs "$EPOCHS" --batch-size 128 \
            --lr 0.1 --warmup-epochs 0 --workers 1 --no-progress
    fi
done
if [ "${BENCH:-1}" = 1 ]; then
    "$MOBILENETS" bench "$RUNS/mobilenet_v3_large" "$RUNS/mobilenet_v3_small" "$RUNS/mobilenet_v2" \
        --data fashion-mnist --int8 --batch 1 --threads 2 --iterations 200 \
        --markdown "$RUNS/bench.md" --json "$RUNS/bench.json"
fi
