"""Where a run computes: mixed precision is off on the CPU unless asked for."""

import torch

from mobilenets.engine.device import autocast_dtype


def test_autocast_is_off_on_cpu_unless_asked():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", cpu) == torch.float16
