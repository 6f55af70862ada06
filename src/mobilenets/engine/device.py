"""Where a run computes: the device, mixed precision, the processes of a torchrun job, and the
CPU features that decide the int8 kernels."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mobilenets.core.errors import MobileNetsError


def pick_device(name: str) -> torch.device:
    """``"auto"`` (a CUDA GPU when there is one), ``"cpu"`` or ``"cuda[:N]"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise MobileNetsError(f"device must be auto, cpu or cuda[:N], got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MobileNetsError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None runs in fp32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=memory_format)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (if any): NCCL
    on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


def run_device(name: str, distributed: Distributed) -> torch.device:
    """The device of this process: ``name``'s, on this process's own GPU in a torchrun job."""
    device = pick_device(name)
    if distributed.enabled and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    return device


def all_sum(tensor: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    """Sum ``tensor`` over the processes of the job, in place."""
    if distributed.enabled:
        dist.all_reduce(tensor)
    return tensor


# x86 int8 dot-product instructions, as /proc/cpuinfo names them: with one of these a u8 x s8
# product is summed in int32; without them (AVX2 alone) onnxruntime and oneDNN add pairs of
# products in int16 with saturation (pmaddubsw), which the int8 files' 7-bit weights keep exact.
INT8_DOT_FLAGS = {"avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8"}
# ARM's int8 dot products: SDOT/UDOT (asimddp) and the i8mm matrix multiply
ARM_DOT_FLAGS = {"asimddp": "dot product", "i8mm": "i8mm"}


@dataclass(frozen=True)
class CpuInfo:
    """The processor's name and the instruction-set flags that decide which int8 kernels
    onnxruntime, OpenVINO and XNNPACK run: int8 results and timings are reported beside it."""

    name: str
    machine: str  # platform.machine(): x86_64, aarch64, ...
    flags: frozenset[str]

    @property
    def int8_dot(self) -> tuple[str, ...]:
        """The int8 dot-product extensions this CPU has (VNNI, AMX, ARM's dot product)."""
        known = INT8_DOT_FLAGS | ARM_DOT_FLAGS
        return tuple(label for flag, label in known.items() if flag in self.flags)

    @property
    def int16_pairs(self) -> bool:
        """True on an x86 CPU without VNNI or AMX: int8 GEMMs there add pairs of u8 x s8
        products in int16 with saturation."""
        return self.machine in ("x86_64", "AMD64") and not self.int8_dot

    def describe(self) -> str:
        """One line: ``AMD EPYC (x86_64): AVX2, no AVX-512, no VNNI, no AMX``."""
        if self.machine not in ("x86_64", "AMD64"):
            dot = ", ".join(self.int8_dot) or "no int8 dot product"
            return f"{self.name} ({self.machine}): {dot}"
        if "avx512f" in self.flags:
            vector = "AVX-512"
        else:
            vector = "AVX2" if "avx2" in self.flags else "no AVX2"
        parts = [vector] + ([] if "avx512f" in self.flags else ["no AVX-512"])
        vnni = [label for flag, label in INT8_DOT_FLAGS.items() if flag in self.flags]
        parts += vnni or ["no VNNI"]
        parts += [] if "amx_int8" in self.flags else ["no AMX"]
        return f"{self.name} ({self.machine}): {', '.join(parts)}"


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> CpuInfo:
    """This machine's [`CpuInfo`][mobilenets.engine.device.CpuInfo], read from ``cpuinfo``
    (Linux); elsewhere the name is platform's and no flags are known."""
    name, flags = "", frozenset()
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 and ARM spell it differently
            flags = frozenset(value.split())
    return CpuInfo(name or platform.processor() or platform.machine(), platform.machine(), flags)
