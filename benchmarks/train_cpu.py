"""Training throughput of our train step against torchvision's mobilenet_v2, same run.

Three configurations, timed in alternation so that machine noise hits them alike:

- reference: torchvision's mobilenet_v2 in a plain loop over ready-made tensors (SGD, cross-
  entropy, channels_last): the floor any training loop pays;
- torchvision model, our step: the same model through ``mobilenets.engine.loop.train_epoch`` with
  our data pipeline (EpochSampler, per-sample seeded transforms, DataLoader) and bookkeeping;
- ours: our MobileNetV2 through the same step.

ours / reference is the cost of our model plus our loop; the middle row separates the two.

    .venv/bin/python benchmarks/train_cpu.py [--resolution 64] [--batch 64] [--steps 8]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from mobilenets import MobileNetV2
from mobilenets.data.classification import load_synthetic
from mobilenets.data.common import EpochSampler
from mobilenets.data.transforms import eval_transform, train_transform
from mobilenets.engine.loop import EpochState, Trainer, make_loader, train_epoch
from mobilenets.engine.optim import make_optimizer
from mobilenets.tasks.classification.train import TrainConfig, classification_loss, train_config


def reference_seconds(model, images, labels, batch: int, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        x = images[step * batch : (step + 1) * batch].to(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), labels[step * batch : (step + 1) * batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def our_step_seconds(model, splits, config: TrainConfig, epoch: int) -> float:
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer = Trainer(optimizer, scheduler, scaler, config, torch.device("cpu"))
    sampler = EpochSampler(
        len(splits.train), seed=0, epoch=epoch, batch_size=config.batch_size, drop_last=True
    )
    loader = make_loader(
        splits.train, sampler, config.batch_size, config.workers, torch.device("cpu")
    )
    start = time.perf_counter()
    train_epoch(model, loader, trainer, EpochState(), loss_fn=classification_loss, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    count = args.batch * args.steps
    splits = load_synthetic(count)
    preprocessing = splits.preprocessing.replace(resolution=args.resolution)
    # The same light augmentation in our pipeline as a user's basic recipe: crop and flip.
    splits.train.transform = train_transform(preprocessing, "basic", 0.0, small=True)
    config = train_config(
        "modern",
        batch_size=args.batch,
        lr=0.01,
        weight_decay=0.0,
        label_smoothing=0.0,
        ema_decay=0.0,
        augment="basic",
        random_erasing=0.0,
        workers=0,
    )
    transform = eval_transform(preprocessing)
    images = torch.stack([transform(image) for image in splits.train.images])
    labels = splits.train.labels

    models = {
        "reference": torchvision.models.mobilenet_v2(num_classes=10),
        "torchvision model, our step": torchvision.models.mobilenet_v2(num_classes=10),
        "ours": MobileNetV2(num_classes=10, resolution=args.resolution),
    }
    for model in models.values():
        model.to(memory_format=torch.channels_last)
    seconds = {label: [] for label in models}
    for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
        for label, model in models.items():
            if label == "reference":
                elapsed = reference_seconds(model, images, labels, args.batch, args.steps)
            else:
                elapsed = our_step_seconds(model, splits, config, repeat)
            if repeat:
                seconds[label].append(elapsed)

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, mobilenet_v2 1.0, {args.resolution}x{args.resolution}, "
        f"batch {args.batch}, {args.steps} steps, channels_last, median of {args.repeats}"
    )
    print("| configuration | images/s | / reference |")
    print("|---|---:|---:|")
    reference = statistics.median(seconds["reference"])
    for label, samples in seconds.items():
        median = statistics.median(samples)
        print(f"| {label} | {count / median:.0f} | {reference / median:.3f} |")


if __name__ == "__main__":
    main()
