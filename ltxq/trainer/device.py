"""Device, precision and the accelerate `Accelerator` of a run."""

from __future__ import annotations

import torch

from ltxq.errors import TrainingError

_WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    """Return the device NAME names ("cuda:1", "cpu"), or the best available one for None."""
    if name is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise TrainingError(f"unknown device {name!r} (try cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device {name!r}: no CUDA GPU is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainingError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s)")
    return device


def resolve_precision(setting: str, device: torch.device) -> str:
    """Turn `optimization.mixed_precision` into accelerate's no / bf16 / fp16 for DEVICE."""
    if setting == "auto":
        if device.type != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if setting == "fp16" and device.type != "cuda":
        raise TrainingError(f"optimization.mixed_precision: fp16 needs a CUDA GPU, "
                            f"this run is on {device}")
    return setting


def weight_dtype(precision: str) -> torch.dtype:
    """Return the dtype the frozen base weights are kept in under PRECISION."""
    return _WEIGHT_DTYPES[precision]


def make_accelerator(precision: str, device: torch.device):
    """Return an Accelerator for PRECISION on DEVICE.

    accelerate keeps one process-wide state that refuses a second precision; a warm daemon
    runs jobs of different precisions one after another, so the state is reset when it
    disagrees (single process only: a distributed launch never changes either).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    cpu = device.type == "cpu"
    try:
        accelerator = Accelerator(mixed_precision=precision, cpu=cpu)
    except ValueError:
        accelerator = None
    if (accelerator is None or accelerator.device.type != device.type
            or accelerator.mixed_precision != precision):
        if accelerator is not None and accelerator.num_processes > 1:
            raise TrainingError(f"cannot switch a distributed run to {device} {precision}")
        AcceleratorState._reset_state(reset_partial_state=True)  # noqa: SLF001 - no public reset
        accelerator = Accelerator(mixed_precision=precision, cpu=cpu)
    return accelerator
