"""LoRA adapters on the transformer via peft: add, read, write, remove.

One adapter, named "default" (the name peft and diffusers assume when saving and loading).
`remove_lora` puts the transformer back as it was loaded, so a warm model serves the next job.
"""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from ltxq.config import LoraConfig
from ltxq.errors import TrainingError

ADAPTER = "default"


def add_lora(transformer: torch.nn.Module, lora: LoraConfig, seed: int) -> list[torch.nn.Parameter]:
    """Freeze TRANSFORMER, add a fresh adapter (init seeded by SEED) and return its parameters.

    The adapter parameters are float32 whatever the base dtype: bf16 optimizer updates of
    small LoRA weights lose most of their bits.
    """
    transformer.requires_grad_(False)
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.effective_alpha,
                            lora_dropout=lora.dropout, init_lora_weights=True,
                            target_modules=list(lora.target_modules))
    # peft initialises lora_A from the global RNG: seed it here without moving the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            transformer.add_adapter(config, adapter_name=ADAPTER)
        except ValueError as e:
            raise TrainingError(f"lora.target_modules: {e}") from None
    params = [p for p in transformer.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("lora.target_modules matched no module of the transformer")
    for p in params:
        p.data = p.data.float()
    return params


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return the adapter weights (peft keys, no adapter name) as contiguous CPU tensors."""
    state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def load_lora_state_dict(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy STATE (from `lora_state_dict`) into the adapter; every adapter weight must be there."""
    expected = set(lora_state_dict(transformer))
    if set(state) != expected:
        missing = sorted(expected - set(state))[:3]
        extra = sorted(set(state) - expected)[:3]
        raise TrainingError(f"checkpoint LoRA does not match this config's adapter "
                            f"(missing {missing}, unexpected {extra})")
    set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)


def adapter_metadata(transformer: torch.nn.Module) -> dict:
    """Return the adapter's peft config as a dict (rank, alpha, targets) for inference.

    The training-time dropout is left out (0): diffusers' `load_lora_weights` restores it from
    the file's metadata and leaves the new layers in train mode, so a LoRA saved with dropout
    0.1 would be noisy at inference.
    """
    meta = transformer.peft_config[ADAPTER].to_dict()
    meta["lora_dropout"] = 0.0
    return meta


def remove_lora(transformer: torch.nn.Module) -> None:
    """Take every adapter layer out and leave the base weights frozen, in eval mode."""
    if getattr(transformer, "_hf_peft_config_loaded", False) or hasattr(transformer, "peft_config"):
        transformer.unload_lora()
    if getattr(transformer, "gradient_checkpointing", False):
        transformer.disable_gradient_checkpointing()
    transformer.requires_grad_(False)
    transformer.eval()
