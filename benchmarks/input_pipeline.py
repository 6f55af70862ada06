"""Images/s of the training input pipeline alone (no model) on an ImageNet-layout folder.

Two paths over the same epoch order and the same per-image seeds:

- reference: the CPU path, ``ImageFiles`` + ``train_transform`` (PIL decode, random-resized
  crop, flip, normalise per image) in a DataLoader with ``--workers`` processes, each batch
  moved to ``--device``;
- device: ``mobilenets.data.jpeg_device.JpegFolderOnDevice``, files read by a thread pool,
  decoded in one ``decode_jpeg`` call per batch (nvJPEG on CUDA) and cropped, resized, flipped
  and normalised on ``--device``.

Each round times one epoch of each path, alternating, after one untimed warm-up batch each
(CUDA context, nvJPEG handles); the best round of each is reported. ``--synthetic N`` writes N
JPEGs of ImageNet-like sizes (about 500x375) to a temporary folder; ``--folder DIR`` reads
``DIR/train`` (or ``DIR`` itself when it has no ``train/``).

    python benchmarks/input_pipeline.py --synthetic 2048 --device cuda --workers 8
    .venv/bin/python benchmarks/input_pipeline.py --synthetic 256 --device cpu --workers 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets as tv_datasets

from mobilenets.core.preprocessing import imagenet_preprocessing
from mobilenets.data.common import EpochSampler, ImageFiles, open_image
from mobilenets.data.jpeg_device import JpegFolderOnDevice
from mobilenets.data.transforms import train_transform
from mobilenets.engine.loop import make_loader

# Most ImageNet training images are 500 px on the long side, landscape 4:3 the commonest.
SYNTHETIC_SIZES = [(375, 500), (333, 500), (500, 375), (500, 333), (400, 500), (281, 500)]
SYNTHETIC_CLASSES = 10


def write_synthetic(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs (quality 90) under ``root/train/classK/``: smooth colour fields plus
    noise, so that files are about as large as photographs of the same size."""
    rng = np.random.default_rng(seed)
    for number in range(count):
        height, width = SYNTHETIC_SIZES[number % len(SYNTHETIC_SIZES)]
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(field + noise, 0, 255).astype(np.uint8)
        folder = root / "train" / f"class{number % SYNTHETIC_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{number:06d}.JPEG", quality=90)
    return root / "train"


def cpu_path_seconds(
    samples, preprocessing, batch: int, workers: int, device: torch.device, epoch: int
) -> float:
    dataset = ImageFiles(samples, train_transform(preprocessing, "none", 0.0, small=False))
    sampler = EpochSampler(len(samples), seed=0, epoch=epoch, batch_size=batch, drop_last=True)
    start = time.perf_counter()
    for images, labels in make_loader(dataset, sampler, batch, workers, device):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
    synchronize(device)
    return time.perf_counter() - start


def device_path_seconds(
    dataset: JpegFolderOnDevice, batch: int, device: torch.device, epoch: int
) -> float:
    sampler = EpochSampler(len(dataset), seed=0, epoch=epoch, batch_size=batch, drop_last=True)
    start = time.perf_counter()
    for _ in dataset.batches(sampler, batch, device):
        pass
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--folder", type=Path, help="an ImageNet-layout folder (DIR/train/CLASS)")
    source.add_argument(
        "--synthetic", type=int, default=512, help="write this many synthetic JPEGs (default 512)"
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"]
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="the CPU path's DataLoader workers (default: all cores)",
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    preprocessing = imagenet_preprocessing(args.resolution)

    with tempfile.TemporaryDirectory() as temporary:
        if args.folder is not None:
            train = args.folder / "train" if (args.folder / "train").is_dir() else args.folder
            what = str(args.folder)
        else:
            train = write_synthetic(Path(temporary), args.synthetic)
            what = f"{args.synthetic} synthetic JPEGs"
        samples = tv_datasets.ImageFolder(str(train), loader=open_image).samples
        if len(samples) < args.batch:
            parser.error(f"{len(samples)} images, fewer than one batch of {args.batch}")
        dataset = JpegFolderOnDevice(samples, preprocessing, channels_last=True)
        # Warm-up: one batch of each path, untimed.
        warm = samples[: args.batch]
        cpu_path_seconds(warm, preprocessing, args.batch, args.workers, device, epoch=0)
        device_path_seconds(JpegFolderOnDevice(warm, preprocessing), args.batch, device, 0)
        cpu_times, device_times = [], []
        for round_ in range(args.rounds):
            cpu_times.append(
                cpu_path_seconds(
                    samples, preprocessing, args.batch, args.workers, device, epoch=round_
                )
            )
            device_times.append(device_path_seconds(dataset, args.batch, device, round_))

    images = len(samples) // args.batch * args.batch
    cpu_rate, device_rate = images / min(cpu_times), images / min(device_times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"{what}, {images} images an epoch, batch {args.batch}, {args.resolution}x"
        f"{args.resolution}, {args.device} ({name or platform.machine()}), "
        f"{os.cpu_count()} CPU cores, best of {args.rounds} rounds\n"
    )
    print("| path | reads and decodes on | images/s |")
    print("|---|---|---:|")
    print(
        f"| ImageFiles + train_transform, DataLoader | {args.workers} CPU workers | "
        f"{cpu_rate:,.0f} |"
    )
    print(f"| JpegFolderOnDevice | {args.device} | {device_rate:,.0f} |")
    print(f"\ndevice / CPU DataLoader: {device_rate / cpu_rate:.2f}x")


if __name__ == "__main__":
    main()
