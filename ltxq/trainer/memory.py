"""Device memory: what sits on the training device when, optional 8-bit parts, the peak.

While steps run, only the transformer (and its LoRA and optimizer state) is on the training
device: latents and caption embeddings are cached, validation prompts are encoded once, and
the VAE and T5 come to the device only to encode a dataset or decode samples (`on_device`).
Optional packages (bitsandbytes for adamw8bit, torchao for int8/fp8 weights) are imported only
when a config asks for them, and their absence is one line naming the extra to install.
"""

from __future__ import annotations

import contextlib
import importlib
import resource
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch

from ltxq.config import OptimizationConfig
from ltxq.errors import TrainingError

_GIB = float(1 << 30)
# Which pip extra brings which package (pyproject [project.optional-dependencies]).
EXTRAS = {"bitsandbytes": "adamw8bit", "torchao": "quantization"}


def require(package: str, why: str) -> ModuleType:
    """Import PACKAGE, or raise TrainingError naming WHY it is needed and the extra to install."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        extra = EXTRAS.get(package, package)
        raise TrainingError(f"{why} needs the {package} package ({e.msg}): "
                            f"pip install 'ltxq[{extra}]'") from None


@contextlib.contextmanager
def on_device(module: torch.nn.Module | None, device: torch.device) -> Iterator[None]:
    """Bring MODULE to DEVICE for the block, and back to where it was after it."""
    if module is None:
        yield
        return
    home = next(module.parameters()).device
    if home == device:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(home)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def make_optimizer(params: Sequence[torch.nn.Parameter],
                   opt: OptimizationConfig) -> torch.optim.Optimizer:
    """Return AdamW, or bitsandbytes' 8-bit AdamW (state in 8 bits: a quarter of the memory)."""
    if opt.optimizer == "adamw8bit":
        bnb = require("bitsandbytes", "optimization.optimizer = 'adamw8bit'")
        return bnb.optim.AdamW8bit(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.learning_rate, weight_decay=opt.weight_decay)


def quantize_transformer(transformer: torch.nn.Module, mode: str,
                         keep: Sequence[str] = ()) -> int:
    """Quantize the frozen Linear weights of TRANSFORMER's blocks to MODE (int8 or fp8).

    Weight-only (torchao): activations and the LoRA path stay in the compute dtype. peft
    trains a LoRA over int8 weights; it has no fp8 LoRA layer, so with fp8 the Linear layers
    whose names end in one of KEEP (the LoRA targets) stay unquantized. Returns how many
    layers were quantized.
    """
    if mode == "none":
        return 0
    require("torchao", f"model.quantization = '{mode}'")
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    def chosen(module: torch.nn.Module, name: str) -> bool:
        if not isinstance(module, torch.nn.Linear) or ".transformer_blocks." not in f".{name}":
            return False
        return mode == "int8" or not any(name == k or name.endswith("." + k) for k in keep)

    count = sum(chosen(m, n) for n, m in transformer.named_modules())
    config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
    quantize_(transformer, config, filter_fn=chosen)
    return count


def quantize_text_encoder(text_encoder: torch.nn.Module) -> None:
    """Give T5's Linear layers int8 weights (torchao): about half its bf16 memory."""
    require("torchao", "model.text_encoder_8bit = true")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(text_encoder, Int8WeightOnlyConfig())


class PeakMemory:
    """The peak memory of one job: the device's allocator on a GPU, resident memory on a CPU.

    On CUDA the allocator's peak is reset at the start. On a CPU the kernel's high-water mark of
    this process (VmHWM) is reset through /proc/self/clear_refs where Linux allows it; where it
    does not, the process's peak since it started is reported.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")

    def gib(self) -> float | None:
        """Return the peak so far in GiB (None when it cannot be read)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / _GIB
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / _GIB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB
