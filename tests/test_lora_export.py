"""LoRAs that load right everywhere: no training dropout at inference, and a ComfyUI copy whose
keys and alphas ComfyUI's LTX-Video loader takes whole (simulated from its key rules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import render_latents
from safetensors import safe_open
from safetensors.torch import load_file
from test_trainer_support import RecordingRun, fit_clean, make_config, random_samples

from ltxq.trainer.export import COMFY_FILE, LORA_FILE, comfy_key
from ltxq.trainer.lora import remove_lora
from ltxq.trainer.models import build_tiny_random, make_pipeline

# Attention plus the non-attention modules ComfyUI names differently from diffusers.
TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "proj_in", "time_embed.linear", "ff.net.0.proj"]
RANK, ALPHA = 4, 16.0


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train a LoRA with dropout 0.3 and alpha != rank on attention and non-attention modules."""
    out = tmp_path_factory.mktemp("lora") / "out"
    config = make_config(lora={"rank": RANK, "alpha": ALPHA, "dropout": 0.3,
                               "target_modules": TARGETS},
                         optimization={"steps": 3, "learning_rate": 2e-2, "warmup_steps": 0},
                         checkpoints={"interval": 0})
    fit_clean(config, RecordingRun(out), build_tiny_random(), random_samples())
    return out


def test_saved_metadata_has_no_training_dropout(out: Path) -> None:
    with safe_open(str(out / LORA_FILE), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.lora_dropout"] == 0.0
    assert meta["transformer.lora_alpha"] == ALPHA and meta["transformer.r"] == RANK


def test_dropout_trained_lora_gives_equal_outputs_twice(out: Path) -> None:
    fresh = build_tiny_random()
    base = render_latents(fresh)
    make_pipeline(fresh).load_lora_weights(str(out), weight_name=LORA_FILE, adapter_name="mine")
    first, second = render_latents(fresh), render_latents(fresh)
    assert np.abs(first - base).max() > 1e-3  # the LoRA does something
    assert np.abs(first - second).max() == 0.0  # and the same thing each time (no dropout)


# --- ComfyUI, simulated ---------------------------------------------------------------------

# diffusers' single-file converter renames the original (ComfyUI) names this way; invert it.
_TO_ORIGINAL = {"proj_in": "patchify_proj", "time_embed": "adaln_single", "norm_q": "q_norm",
                "norm_k": "k_norm"}


def _original_name(diffusers_key: str) -> str:
    for new, old in _TO_ORIGINAL.items():
        diffusers_key = diffusers_key.replace(new, old)
    return diffusers_key


def _comfy_patch(model_sd: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Apply LORA as ComfyUI's loader does (comfy/lora.py): a key map from the model's weight
    names, `{x}.lora_A/lora_B.weight` and `{x}.alpha` per mapped name, scale alpha / rank
    (1.0 without alpha); return the patched weights and the keys it did not load."""
    key_map = {k[: -len(".weight")]: k for k in model_sd if k.endswith(".weight")}
    loaded: set[str] = set()
    patched = dict(model_sd)
    for x, weight_key in key_map.items():
        a_name, b_name, alpha_name = f"{x}.lora_A.weight", f"{x}.lora_B.weight", f"{x}.alpha"
        if a_name not in lora:
            continue
        down, up = lora[a_name], lora[b_name]
        scale = lora[alpha_name].item() / down.shape[0] if alpha_name in lora else 1.0
        loaded |= {a_name, b_name} | ({alpha_name} if alpha_name in lora else set())
        patched[weight_key] = model_sd[weight_key] + scale * (up @ down)
    return patched, set(lora) - loaded


def test_comfy_copy_names_and_alphas(out: Path) -> None:
    comfy = load_file(out / COMFY_FILE)
    assert "diffusion_model.patchify_proj.lora_A.weight" in comfy
    assert "diffusion_model.adaln_single.linear.lora_B.weight" in comfy
    assert not any(".proj_in." in k or "time_embed" in k for k in comfy)
    alphas = {k: v for k, v in comfy.items() if k.endswith(".alpha")}
    modules = [k for k in comfy if k.endswith(".lora_A.weight")]
    assert len(alphas) == len(modules) == 4 * 2 + 3  # 4 per attention, 2 attentions, 3 others
    assert all(v.item() == ALPHA for v in alphas.values())
    assert comfy_key("transformer.time_embed.linear.lora_A.weight") == \
        "diffusion_model.adaln_single.linear.lora_A.weight"


def test_comfy_loader_takes_every_key_at_the_trained_strength(out: Path) -> None:
    """ComfyUI loads every key of the copy; its patched model equals diffusers with the LoRA."""
    fresh = build_tiny_random()
    original = {"diffusion_model." + _original_name(k): v
                for k, v in fresh.transformer.state_dict().items()}
    patched, not_loaded = _comfy_patch(original, load_file(out / COMFY_FILE))
    assert not_loaded == set()  # ComfyUI would log "lora key not loaded" for each of these
    # Back to diffusers names, into a plain transformer: the same output as diffusers + LoRA.
    back = {k[len("diffusion_model."):]: v for k, v in patched.items()}
    for old, new in (("patchify_proj", "proj_in"), ("adaln_single", "time_embed"),
                     ("q_norm", "norm_q"), ("k_norm", "norm_k")):
        back = {k.replace(old, new): v for k, v in back.items()}
    comfy_model = build_tiny_random()
    comfy_model.transformer.load_state_dict(back)
    via_comfy = render_latents(comfy_model)
    make_pipeline(fresh).load_lora_weights(str(out), weight_name=LORA_FILE)
    via_diffusers = render_latents(fresh)
    assert np.abs(via_comfy - render_latents(build_tiny_random())).max() > 1e-3
    np.testing.assert_allclose(via_comfy, via_diffusers, atol=1e-5)
    remove_lora(fresh.transformer)
