"""The final outputs of a run: the diffusers LoRA, its ComfyUI copy and the config used.

Each file is written under a temporary name and renamed into place, so a reader (or a
resumed run after a crash) never finds a half-written LoRA.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import tomli_w
import torch
from diffusers import LTXPipeline
from safetensors import safe_open
from safetensors.torch import save_file

from ltxq.config import TrainingConfig, config_to_dict

LORA_FILE = "pytorch_lora_weights.safetensors"
COMFY_FILE = "comfy_lora_weights.safetensors"
CONFIG_FILE = "config.toml"


def save_lora(output_dir: Path, lora: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write LORA (peft keys) as `pytorch_lora_weights.safetensors` that LTXPipeline loads.

    The adapter METADATA goes into the file: without it a reload assumes alpha = rank.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".tmp-lora-") as tmp:
        LTXPipeline.save_lora_weights(
            tmp, transformer_lora_layers=lora, transformer_lora_adapter_metadata=metadata,
            weight_name=LORA_FILE)
        final = output_dir / LORA_FILE
        os.replace(Path(tmp) / LORA_FILE, final)
    return final


def save_comfy_copy(lora_file: Path) -> Path:
    """Write the ComfyUI copy of LORA_FILE next to it (`transformer.` -> `diffusion_model.`)."""
    tensors = {}
    with safe_open(str(lora_file), framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():  # noqa: SIM118 - a safe_open handle, not a dict
            new = "diffusion_model." + key[len("transformer."):] if key.startswith(
                "transformer.") else key
            tensors[new] = f.get_tensor(key)
    final = lora_file.with_name(COMFY_FILE)
    tmp = final.with_name(f".tmp-{COMFY_FILE}")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, final)
    return final


def save_config(output_dir: Path, config: TrainingConfig) -> Path:
    """Write the config this run used as `config.toml`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / CONFIG_FILE
    tmp = final.with_name(f".tmp-{CONFIG_FILE}")
    tmp.write_text(tomli_w.dumps(config_to_dict(config)))
    os.replace(tmp, final)
    return final


def lora_alpha_in(lora_file: Path) -> float | None:
    """Return the lora_alpha recorded in LORA_FILE's metadata, if any (for checks and tests)."""
    with safe_open(str(lora_file), framework="pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    if raw is None:
        return None
    meta = json.loads(raw)  # diffusers prefixes each key with the component's name
    alpha = meta.get("transformer.lora_alpha", meta.get("lora_alpha"))
    return None if alpha is None else float(alpha)


def remove_stale_tmp(output_dir: Path) -> None:
    """Remove temporary export files a killed run left behind."""
    for entry in output_dir.glob(".tmp-*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
