#!/usr/bin/env bash
# One model per MobileNet family at a comparable size (V1 1.0, V2 1.0, V2 1.4, V3-Large,
# V3-Small, V4 Conv-S) trained on Fashion-MNIST with one short schedule, then one `bench` run of
# the six checkpoints: test top-1 in PyTorch, onnxruntime float and int8 (calibrated on 256
# training images), and the batch-1 latency of each, 2 threads. The "trained here" picture of the
# family chart (docs/results/family.md) is drawn from the bench's JSON:
#   mobilenets zoo --chart docs/results/family_trained.png --trained RUNS/bench.json
#
# The schedule (the same as benchmarks/fashion_mnist_v3.sh): small-input variant at 28x28, one
# input channel, --preset modern --augment basic, ONE epoch at batch 128 (469 steps), lr 0.1, no
# warmup, cosine to zero: about 15 minutes per model on a 2-core CPU. Each run is resumable: run
# the script again after an interrupt and it continues the runs it finds.
#
#   bash benchmarks/fashion_mnist_family.sh [RUNS_DIR]     (default runs/fmnist-family)
#   EPOCHS=3 BENCH=0 ... to change the schedule or skip the bench
set -eu
RUNS=${1:-runs/fmnist-family}
EPOCHS=${EPOCHS:-1}
MOBILENETS=${MOBILENETS:-.venv/bin/mobilenets}
# run folder, family, width multiplier
MODELS=${MODELS:-"mobilenet_v1:mobilenet_v1:1.0 mobilenet_v2:mobilenet_v2:1.0
mobilenet_v2_1.4:mobilenet_v2:1.4 mobilenet_v3_large:mobilenet_v3_large:1.0
mobilenet_v3_small:mobilenet_v3_small:1.0 mobilenet_v4_conv_small:mobilenet_v4_conv_small:1.0"}
mkdir -p "$RUNS"
dirs=()
for entry in $MODELS; do
    IFS=: read -r name model alpha <<<"$entry"
    out="$RUNS/$name"
    dirs+=("$out")
    if [ -f "$out/last.safetensors" ]; then
        echo "$out: done"
        continue
    fi
    if [ -f "$out/state/last.pt" ]; then
        "$MOBILENETS" train --out "$out" --resume --no-progress
    else
        "$MOBILENETS" train --out "$out" --model "$model" --alpha "$alpha" --data fashion-mnist \
            --small-input --resolution 28 --preset modern --augment basic --epochs "$EPOCHS" \
            --batch-size 128 --lr 0.1 --warmup-epochs 0 --workers 1 --no-progress
    fi
done
if [ "${BENCH:-1}" = 1 ]; then
    "$MOBILENETS" bench "${dirs[@]}" --data fashion-mnist --int8 --batch 1 --threads 2 \
        --iterations 200 --markdown "$RUNS/bench.md" --json "$RUNS/bench.json"
fi
