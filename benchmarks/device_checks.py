"""What the CPU tests cannot check: the training paths on a CUDA device against the CPU.

1. The counter-based random stream of `mobilenets.data.device_data` gives the same numbers on
   the device as on the CPU (it must, exactly).
2. `DeviceImages.batch` (pad-and-crop, flip, TrivialAugment, random erasing) on the device
   against the CPU: the share of values that differ and the largest difference (float
   arithmetic in grid_sample may move a rounded pixel by a level).
3. `JpegFolderOnDevice` (nvJPEG on CUDA) against the CPU decoder on generated JPEGs.
4. The compiled step (CUDA graphs on CUDA): a one-epoch run with --compile and device data
   finishes with a finite loss; then a loss made NaN from step 3 on skips its update on the
   device (parameters and EMA equal to those after step 2) and raises
   TrainingDiverged at the read-back.
5. fp16 with the grad scaler through the same step.

Prints one line per check, "ok" or "FAILED", and exits non-zero if one failed.

    python benchmarks/device_checks.py [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mobilenets.core.models import build_model
from mobilenets.core.preprocessing import imagenet_preprocessing
from mobilenets.core.spec import ModelConfig
from mobilenets.data.classification import load_synthetic
from mobilenets.data.common import EpochSampler, ImageFiles
from mobilenets.data.device_data import DeviceImages, uniform
from mobilenets.data.jpeg_device import JpegFolderOnDevice
from mobilenets.engine.device import Distributed
from mobilenets.engine.loop import EpochState, TrainingDiverged, make_trainer, train_epoch
from mobilenets.engine.run import compiled
from mobilenets.engine.settings import TrainSettings
from mobilenets.tasks.classification.train import fit, train_config

CPU = torch.device("cpu")
failures = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok' if ok else 'FAILED'}: {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def check_stream(device: torch.device) -> None:
    index = torch.arange(100_000)
    here, there = uniform(7, 3, index, 8), uniform(7, 3, index.to(device), 8).cpu()
    report("random stream", torch.equal(here, there), f"{index.numel()} x 8 draws compared")


def check_device_images(device: torch.device) -> None:
    splits = load_synthetic(256)
    cpu, gpu = (
        DeviceImages.from_tensor_images(
            splits.train,
            splits.preprocessing,
            augment="trivial",
            random_erasing=0.25,
            channels_last=True,
            device=where,
        )
        for where in (CPU, device)
    )
    indices = torch.arange(256)
    a, labels_a = cpu.batch(indices, 0, 1)
    b, labels_b = gpu.batch(indices.to(device), 0, 1)
    difference = (a - b.cpu()).abs()
    share = (difference > 1e-6).float().mean().item()
    level = max(splits.preprocessing.std) / 255 * 1.01
    ok = torch.equal(labels_a, labels_b.cpu()) and share < 0.01 and difference.max() <= 2 * level
    report(
        "device augmentation",
        ok,
        f"{100 * share:.3f}% of values differ, largest "
        f"{difference.max().item():.4g} (one level is {level:.4g})",
    )


def check_jpeg(device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as folder:
        generator = np.random.default_rng(0)
        samples = []
        for index in range(16):
            size = (300 + 13 * index, 220 + 7 * index)
            pixels = generator.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
            path = Path(folder) / f"{index}.jpg"
            Image.fromarray(pixels).resize(size).save(path, quality=90)
            samples.append((str(path), index % 2))
        files = ImageFiles(samples)
        preprocessing = imagenet_preprocessing(224)
        dataset = JpegFolderOnDevice.from_files(files, preprocessing)
        sampler = EpochSampler(len(samples), seed=0, batch_size=8, drop_last=True)
        a = torch.cat([x for x, _ in dataset.batches(sampler, 8, CPU)])
        b = torch.cat([x.cpu() for x, _ in dataset.batches(sampler, 8, device)])
    difference = (a - b).abs()
    level = max(preprocessing.std) / 255
    report(
        "JPEG decoding",
        difference.mean() < 2 * level,
        f"mean difference {difference.mean().item() / level:.3f} levels, largest "
        f"{difference.max().item() / level:.1f} levels",
    )


def check_compiled_run(device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = train_config(
            "modern",
            data="synthetic:512",
            alpha=0.35,
            epochs=1,
            batch_size=64,
            compile=True,
            device_data="on",
            device=str(device),
        )
        result = fit(config, folder, progress=False)
    row = result.history[-1]
    report(
        "compiled run",
        math.isfinite(row["train_loss"]),
        f"train loss {row['train_loss']:.4f}, {row['images_per_s']:.0f} images/s",
    )


def check_nan_skip(device: torch.device, amp: str) -> None:
    torch.manual_seed(0)
    spec = ModelConfig(
        "mobilenet_v2",
        alpha=0.35,
        resolution=28,
        num_classes=4,
        in_chans=1,
        small_input=True,
        dropout=0.0,
    )
    model = build_model(spec).to(device)
    dtype = {"off": None, "fp16": torch.float16}[amp]
    config = TrainSettings(
        epochs=1,
        batch_size=8,
        lr=0.05,
        warmup_epochs=0.0,
        ema_decay=0.9,
        amp=amp,
        compile=True,
        device=str(device),
    )
    trainer, _ = make_trainer(model, 64, config, device, dtype, Distributed())
    trained = compiled(model, device, Distributed())
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(8, 1, 28, 28, generator=generator).to(device),
            torch.randint(0, 4, (8,), generator=generator).to(device),
        )
        for _ in range(6)
    ]

    def loss_fn(model, batch, trainer):
        images, labels = batch
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        return (loss * math.nan if trainer.step >= 3 else loss), len(labels), {}

    snapshot = None

    def on_step(state):
        nonlocal snapshot
        if trainer.step == 3:  # after step 2's update, before the NaN step
            parameters = {name: p.detach() for name, p in model.named_parameters()}
            snapshot = copy.deepcopy((parameters, trainer.ema.state_dict()))

    try:
        train_epoch(
            trained,
            batches,
            trainer,
            EpochState(),
            loss_fn=loss_fn,
            on_step=on_step,
            progress=False,
        )
        report(f"non-finite skip ({amp})", False, "no TrainingDiverged")
        return
    except TrainingDiverged as error:
        message = str(error)
    weights, ema = snapshot
    # parameters, not BN's running statistics: the skipped steps' forward passes still ran
    same = all(torch.equal(weights[k], p) for k, p in model.named_parameters())
    same &= all(torch.equal(ema[k], v) for k, v in trainer.ema.state_dict().items())
    report(
        f"non-finite skip ({amp})",
        same and "step 3" in message,
        f"parameters and EMA kept after step 2: {same}; {message[:60]}...",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    device = torch.device(parser.parse_args().device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: give --device cpu for a dry run")
    check_stream(device)
    check_device_images(device)
    check_jpeg(device)
    check_compiled_run(device)
    check_nan_skip(device, "off")
    if device.type == "cuda":
        check_nan_skip(device, "fp16")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
