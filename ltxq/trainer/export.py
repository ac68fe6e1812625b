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


# ComfyUI's LTX-Video model (comfy/ldm/lightricks) keeps the original Lightricks module names
# where diffusers renamed them (diffusers' own single-file converter maps these back).
COMFY_MODULE_NAMES = {"proj_in": "patchify_proj", "time_embed": "adaln_single"}


def comfy_key(key: str) -> str:
    """Return the ComfyUI name of diffusers LoRA KEY (`transformer.proj_in.lora_A.weight`)."""
    if not key.startswith("transformer."):
        return key
    first, _, rest = key[len("transformer."):].partition(".")
    return "diffusion_model." + ".".join(p for p in (COMFY_MODULE_NAMES.get(first, first), rest)
                                         if p)


def save_comfy_copy(lora_file: Path) -> Path:
    """Write the ComfyUI copy of LORA_FILE next to it: ComfyUI's module names, and one
    `<module>.alpha` tensor per adapted module.

    Without the alpha tensors ComfyUI scales every LoRA by 1.0 instead of alpha / rank.
    """
    alpha = lora_alpha_in(lora_file)
    tensors = {}
    with safe_open(str(lora_file), framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():  # noqa: SIM118 - a safe_open handle, not a dict
            new = comfy_key(key)
            tensors[new] = f.get_tensor(key)
            if alpha is not None and new.endswith(".lora_A.weight"):
                # ComfyUI reads alpha with .item() and divides by the rank (lora_A's rows).
                tensors[new[: -len(".lora_A.weight")] + ".alpha"] = torch.tensor(alpha)
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
