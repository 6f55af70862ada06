"""Training step on a GPU: our MobileNetV2 against torchvision's, same run; and what the
Fashion-MNIST model's step costs there.

1. Both models at ``--resolution`` (224), batch ``--batch`` (128), bf16 autocast, channels_last,
   cudnn.benchmark, SGD with nesterov: images/s, median of ``--repeats`` alternating rounds of
   ``--steps`` steps after a warm-up, and ours / torchvision.
2. The Fashion-MNIST recipe's model (V2 1.0 small-input, 28x28, one channel, 10 classes, batch
   128) with and without channels_last and bf16 autocast: the ceiling a run's data pipeline
   has to feed.

3. The recipe's width-1.4 model at batch 256, bf16: the bare step against our
   ``train_epoch`` (weight EMA, the loss check, the epoch's sums) over the same ready-made
   batches, and their ratio: what a run's bookkeeping costs on the GPU.

Parts 1 and 2 are bare steps over one ready-made batch: no data loading, EMA or bookkeeping.

    python benchmarks/train_gpu.py [--resolution 224] [--batch 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from mobilenets import create_model
from mobilenets.engine.device import Distributed
from mobilenets.engine.loop import EpochState, make_trainer, train_epoch
from mobilenets.tasks.classification.train import classification_loss, train_config


def images_per_second(model, x, y, dtype, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    return len(x) * steps / (time.perf_counter() - start)


def batch(size: int, channels: int, side: int, classes: int, channels_last: bool):
    x = torch.randn(size, channels, side, side, device="cuda")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(memory_format=memory_format), torch.randint(0, classes, (size,), device="cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_gpu.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")

    models = {
        "torchvision": torchvision.models.mobilenet_v2(),
        "ours": create_model("mobilenet_v2"),
    }
    x, y = batch(args.batch, 3, args.resolution, 1000, channels_last=True)
    rates = {name: [] for name in models}
    for name, model in models.items():
        models[name] = model.cuda().to(memory_format=torch.channels_last)
        images_per_second(models[name], x, y, torch.bfloat16, 5)
    for _ in range(args.repeats):
        for name, model in models.items():
            rates[name].append(images_per_second(model, x, y, torch.bfloat16, args.steps))
    reference = statistics.median(rates["torchvision"])
    print(f"\n{args.resolution}x{args.resolution}, batch {args.batch}, bf16, channels_last")
    print("| model | images/s | / torchvision |\n|---|---:|---:|")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:.0f} | {rate / reference:.3f} |")

    print(f"\nFashion-MNIST model (V2 1.0 small-input, 28x28x1), batch {args.batch}")
    print("| channels_last | autocast | images/s |\n|---|---|---:|")
    for channels_last in (True, False):
        for dtype in (torch.bfloat16, None):
            model = create_model(
                "mobilenet_v2", num_classes=10, in_chans=1, small_input=True, resolution=28
            ).cuda()
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            x, y = batch(args.batch, 1, 28, 10, channels_last)
            images_per_second(model, x, y, dtype, 5)
            rate = images_per_second(model, x, y, dtype, args.steps)
            print(f"| {channels_last} | {dtype or 'off'} | {rate:.0f} |")

    print("\nFashion-MNIST recipe model (V2 1.4 small-input, 28x28x1), batch 256, bf16")
    bare, full = recipe_step_rates(256, args.steps * 5)
    print("| step | images/s |\n|---|---:|")
    print(f"| bare | {bare:.0f} |\n| train_epoch (EMA, checks, sums) | {full:.0f} |")
    print(f"train_epoch / bare: {full / bare:.3f}")


def recipe_step_rates(batch_size: int, steps: int) -> tuple[float, float]:
    """images/s of a bare step and of ``train_epoch``, alternating, medians of three rounds."""
    config = train_config("modern", alpha=1.4, batch_size=batch_size, amp="bf16")
    model = create_model("mobilenet_v2", alpha=1.4, num_classes=10, in_chans=1, small_input=True,
                         resolution=28).cuda().to(memory_format=torch.channels_last)  # fmt: skip
    device = torch.device("cuda")
    trainer, _ = make_trainer(model, batch_size * steps, config, device, torch.bfloat16,
                              Distributed())  # fmt: skip
    x, y = batch(batch_size, 1, 28, 10, channels_last=True)
    batches = [(x, y)] * steps

    def full_rate() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        train_epoch(model, batches, trainer, EpochState(), loss_fn=classification_loss,
                    progress=False)  # fmt: skip
        torch.cuda.synchronize()
        return batch_size * steps / (time.perf_counter() - start)

    full_rate()  # warm-up, cudnn's search
    bare, full = [], []
    for _ in range(3):
        bare.append(images_per_second(model, x, y, torch.bfloat16, steps))
        full.append(full_rate())
    return statistics.median(bare), statistics.median(full)


if __name__ == "__main__":
    main()
