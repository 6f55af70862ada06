"""Training speed on a GPU: our step against torchvision's and timm's in one run, the
Fashion-MNIST recipe end to end against its bare compiled step, and where the step's time goes.

1. The training step at ``--resolution`` (224), batch ``--batch`` (256), ``--amp`` (bf16),
   channels_last, cudnn.benchmark, SGD with nesterov, on one ready-made batch: torchvision's
   MobileNetV2 eager (the reference) and compiled, timm's, ours eager (the same bare loop), and
   ours on the fast path (`mobilenets.engine.loop.train_epoch` over a compiled model, CUDA
   graphs, the fused optimizer, no read-back per step: what `train --compile` runs); the same
   for MobileNetV1 (timm's and ours). images/s, median of ``--repeats`` alternating rounds of
   ``--steps`` steps after a warm-up, and the ratio to the reference: torchvision eager for V2,
   timm eager for V1 (torchvision has no V1).
2. The Fashion-MNIST recipe's model (V2 1.4 small-input, 28x28x1, batch 256): a real training
   run (`mobilenets.tasks.classification.train.fit`: data on the device, augmentation, the
   compiled step, weight EMA, the epoch's bookkeeping) for ``--epochs`` epochs, its last epoch's
   images/s against the bare compiled step of the same model on a ready-made batch.
3. A profile of a few fast-path steps of part 1's MobileNetV2: the top kernels by device time.

On a CPU (``--device cpu``) every part runs too, small, as a check that the script works; the
numbers mean nothing there.

    python benchmarks/train_gpu.py [--batch 256] [--steps 30] [--markdown FILE]
    python benchmarks/train_gpu.py --device cpu --resolution 32 --batch 4 --steps 2 --repeats 1 \\
        --amp off --data synthetic:64 --epochs 1 --fmnist-batch 16
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from mobilenets import create_model
from mobilenets.core.files import atomic_path
from mobilenets.engine.device import Distributed
from mobilenets.engine.loop import EpochState, make_trainer, train_epoch
from mobilenets.engine.run import compiled
from mobilenets.tasks.classification.train import classification_loss, fit, train_config


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


class BareStep:
    """The reference loop: forward, cross-entropy, backward, SGD (PyTorch's default kernels)."""

    def __init__(self, model, device, dtype):
        self.model, self.device, self.dtype = model, device, dtype
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def rate(self, x, y, steps: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            with autocast(self.device, self.dtype):
                loss = F.cross_entropy(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        synchronize(self.device)
        return len(x) * steps / (time.perf_counter() - start)


class FastPath:
    """Ours as `train --compile` runs it: train_epoch over the compiled model with the engine's
    fused optimizer and its device-side checks; weight EMA off (the references have none)."""

    def __init__(self, model, device, dtype, batch_size: int, amp: str, ema_decay: float = 0.0):
        config = train_config(
            "modern",
            batch_size=batch_size,
            amp=amp,
            ema_decay=ema_decay,
            label_smoothing=0.0,
            compile=True,
        )
        self.trainer, _ = make_trainer(
            model, batch_size * 1000, config, device, dtype, Distributed()
        )
        self.model = compiled(model, device, Distributed())
        self.device = device

    def rate(self, x, y, steps: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        train_epoch(
            self.model,
            [(x, y)] * steps,
            self.trainer,
            EpochState(),
            loss_fn=classification_loss,
            progress=False,
        )
        synchronize(self.device)
        return len(x) * steps / (time.perf_counter() - start)


def ready_batch(size, channels, side, classes, device, generator=None):
    x = torch.randn(size, channels, side, side, device=device)
    x = x.to(memory_format=torch.channels_last)
    return x, torch.randint(0, classes, (size,), device=device)


def step_table(args, device, dtype) -> list[str]:
    """Part 1: every contender's images/s on one batch, alternating rounds."""
    import timm

    def cl(model):
        return model.to(device, memory_format=torch.channels_last)

    def torchvision_family(torchvision_name: str, timm_name: str, ours: str) -> dict:
        """torchvision eager and compiled (the reference), timm, ours eager and fast path."""
        builder = getattr(torchvision.models, torchvision_name)
        return {
            f"torchvision {torchvision_name}, eager": BareStep(cl(builder()), device, dtype),
            f"torchvision {torchvision_name} + torch.compile": BareStep(
                torch.compile(cl(builder())), device, dtype
            ),
            f"timm {timm_name}, eager": BareStep(cl(timm.create_model(timm_name)), device, dtype),
            f"ours {ours} 1.0, eager": BareStep(cl(create_model(ours)), device, dtype),
            f"ours {ours} 1.0, fast path": FastPath(
                cl(create_model(ours)), device, dtype, args.batch, args.amp
            ),
        }

    def contenders(arch: str) -> dict:
        if arch == "v4":  # timm's is the reference implementation; torchvision has no V4
            return {
                "timm mobilenetv4_conv_small, eager": BareStep(
                    cl(timm.create_model("mobilenetv4_conv_small")), device, dtype
                ),
                "ours mobilenet_v4_conv_small 1.0, eager": BareStep(
                    cl(create_model("mobilenet_v4_conv_small")), device, dtype
                ),
                "ours mobilenet_v4_conv_small 1.0, fast path": FastPath(
                    cl(create_model("mobilenet_v4_conv_small")), device, dtype, args.batch, args.amp
                ),
            }
        if arch == "v2":
            return torchvision_family("mobilenet_v2", "mobilenetv2_100", "mobilenet_v2")
        if arch == "v3":
            return torchvision_family(
                "mobilenet_v3_large", "mobilenetv3_large_100", "mobilenet_v3_large"
            )
        return {
            "timm mobilenetv1_100, eager": BareStep(
                cl(timm.create_model("mobilenetv1_100")), device, dtype
            ),
            "ours mobilenet_v1 1.0, eager": BareStep(
                cl(create_model("mobilenet_v1")), device, dtype
            ),
            "ours mobilenet_v1 1.0, fast path": FastPath(
                cl(create_model("mobilenet_v1")), device, dtype, args.batch, args.amp
            ),
        }

    lines = [
        f"{args.resolution}x{args.resolution}, batch {args.batch}, amp {args.amp}, channels_last; "
        f"median of {args.repeats} alternating rounds of {args.steps} steps after a warm-up",
        "",
        "| model | images/s | / reference |",
        "|---|---:|---:|",
    ]
    x, y = ready_batch(args.batch, 3, args.resolution, 1000, device)
    for arch in ("v2", "v3", "v1", "v4"):
        # the first row is the reference: torchvision's V2 and V3 eager; timm's V1 and V4
        # (torchvision has neither)
        reference = None
        steps = contenders(arch)
        for step in steps.values():
            step.rate(x, y, max(3, args.steps // 2))  # warm-up: compile, capture, cudnn search
        rates = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                rates[name].append(step.rate(x, y, args.steps))
        for name, values in rates.items():
            rate = statistics.median(values)
            reference = reference or rate
            lines.append(f"| {name} | {rate:,.0f} | {rate / reference:.2f} |")
        del steps
    return lines


def fmnist_end_to_end(args, device, dtype) -> list[str]:
    """Part 2: a real run's last-epoch images/s against the bare compiled step."""
    with tempfile.TemporaryDirectory(prefix="train-gpu-") as folder:
        config = train_config(
            "modern",
            data=args.data,
            model="mobilenet_v2",
            alpha=1.4,
            batch_size=args.fmnist_batch,
            lr=0.2,
            augment="basic",
            random_erasing=0.25,
            epochs=args.epochs,
            amp=args.amp,
            compile=True,
            device=str(device),
            workers=0,
        )
        result = fit(config, folder, progress=False)
        run_rate = result.history[-1]["images_per_s"]
    model = create_model(
        "mobilenet_v2", alpha=1.4, num_classes=10, in_chans=1, small_input=True, resolution=28
    ).to(device)
    model = model.to(memory_format=torch.channels_last)
    bare = FastPath(model, device, dtype, args.fmnist_batch, args.amp, ema_decay=0.0)
    x, y = ready_batch(args.fmnist_batch, 1, 28, 10, device)
    bare.rate(x, y, max(3, args.steps // 2))
    bare_rate = statistics.median(bare.rate(x, y, args.steps * 4) for _ in range(args.repeats))
    return [
        f"V2 1.4 small-input, 28x28x1, batch {args.fmnist_batch}, amp {args.amp}, data "
        f"`{args.data}`",
        "",
        "| | images/s |",
        "|---|---:|",
        f"| bare compiled step, one ready-made batch, no EMA | {bare_rate:,.0f} |",
        f"| training run, epoch {args.epochs} (data on the device, augmentation, EMA, "
        f"bookkeeping) | {run_rate:,.0f} |",
        "",
        f"run / bare: {run_rate / bare_rate:.3f} (goal: at least 0.9)",
    ]


def profile_summary(args, device, dtype) -> list[str]:
    """Part 3: the fast path's top kernels by device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    model = create_model("mobilenet_v2").to(device, memory_format=torch.channels_last)
    step = FastPath(model, device, dtype, args.batch, args.amp)
    x, y = ready_batch(args.batch, 3, args.resolution, 1000, device)
    step.rate(x, y, max(3, args.steps // 2))
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    with profile(activities=activities) as recorded:
        step.rate(x, y, 5)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = recorded.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60)
    return [f"5 fast-path steps of mobilenet_v2 1.0, sorted by {key}", "", "```", table, "```"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", default="bf16", choices=("bf16", "off"))
    parser.add_argument("--data", default="fashion-mnist", help="part 2's dataset")
    parser.add_argument("--epochs", type=int, default=3, help="part 2's epochs")
    parser.add_argument("--fmnist-batch", type=int, default=256)
    parser.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 1,3")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: give --device cpu for a dry run")
    torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or "?"
    )
    sections = [
        f"commit `{commit}`, {date.today().isoformat()}, {name}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}"
    ]
    parts = {
        "1": ("Training step", step_table),
        "2": ("Fashion-MNIST end to end", fmnist_end_to_end),
        "3": ("Profile of the fast path", profile_summary),
    }
    for key in args.parts.split(","):
        title, part = parts[key]
        lines = part(args, device, dtype)
        sections.append(f"## {title}\n\n" + "\n".join(lines))
        print(sections[-1] + "\n", flush=True)
    if args.markdown:
        with atomic_path(args.markdown) as temporary:
            Path(temporary).write_text("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
