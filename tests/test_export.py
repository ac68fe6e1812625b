"""Final outputs: the LoRA loads into a fresh LTXPipeline, the ComfyUI copy, the mp4s."""

from __future__ import annotations

import tomllib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import render_latents
from safetensors.torch import load_file
from test_trainer_support import BASE, RecordingRun, make_config, random_samples

from ltxq.config import parse_config
from ltxq.run import Outcome, TrainResult
from ltxq.trainer.export import COMFY_FILE, LORA_FILE, lora_alpha_in
from ltxq.trainer.loop import fit
from ltxq.trainer.lora import remove_lora
from ltxq.trainer.models import build_tiny_random, make_pipeline


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, np.ndarray, Path]:
    """Train a short LoRA with alpha != rank and render with it before taking it off."""
    out = tmp_path_factory.mktemp("export") / "out"
    config = make_config(lora={"rank": 4, "alpha": 16, "dropout": 0.0},
                         optimization={"steps": 4, "learning_rate": 2e-2, "warmup_steps": 0},
                         validation={"prompts": ["a red square", "a blue circle"],
                                     "interval": 2, "inference_steps": 2, "video": "32x64x9"},
                         checkpoints={"interval": 0})
    components = build_tiny_random()
    run = RecordingRun(out)
    try:
        result = fit(config, run, components, random_samples())
        with_lora = render_latents(components)
    finally:
        remove_lora(components.transformer)
    return result, with_lora, out


def test_lora_loads_into_a_fresh_pipeline(trained: tuple[TrainResult, np.ndarray, Path]) -> None:
    result, with_lora, out = trained
    assert result.outcome is Outcome.COMPLETED
    assert lora_alpha_in(result.lora_path) == 16.0
    fresh = build_tiny_random()
    base = render_latents(fresh)
    pipe = make_pipeline(fresh)
    pipe.load_lora_weights(str(out), weight_name=LORA_FILE, adapter_name="mine")
    loaded = render_latents(fresh)
    # The LoRA changes the output, and by exactly as much as in training (alpha kept).
    assert np.abs(loaded - base).max() > 1e-3
    np.testing.assert_allclose(loaded, with_lora, atol=1e-5)
    pipe.set_adapters(["mine"], adapter_weights=[0.0])
    np.testing.assert_allclose(render_latents(fresh), base, atol=1e-6)


def test_comfy_copy_renames_the_prefix(trained: tuple[TrainResult, np.ndarray, Path]) -> None:
    _, _, out = trained
    diffusers_keys = load_file(out / LORA_FILE)
    comfy = load_file(out / COMFY_FILE)
    assert diffusers_keys and all(k.startswith("transformer.") for k in diffusers_keys)
    assert all(k.startswith("diffusion_model.") for k in comfy)
    assert len(comfy) == len(diffusers_keys) * 3 // 2  # lora_A, lora_B and an alpha per module
    assert all(v.item() == 16.0 for k, v in comfy.items() if k.endswith(".alpha"))
    for key, tensor in diffusers_keys.items():
        assert torch.equal(comfy["diffusion_model." + key[len("transformer."):]], tensor)
    assert any("attn1.to_k.lora_A" in k for k in comfy)
    assert any("attn2.to_out.0.lora_B" in k for k in comfy)


def test_validation_videos_decode(trained: tuple[TrainResult, np.ndarray, Path]) -> None:
    result, _, out = trained
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == ["step_000002_0.mp4", "step_000002_1.mp4",
                     "step_000004_0.mp4", "step_000004_1.mp4"]
    assert result.validation_sample == out / "samples" / "step_000004_0.mp4"
    frames = np.stack(list(iio.imiter(result.validation_sample)))
    assert frames.shape == (9, 64, 32, 3)  # validation.video 32x64x9: 9 frames of 64 rows
    assert frames.dtype == np.uint8


def test_config_copy_round_trips(trained: tuple[TrainResult, np.ndarray, Path]) -> None:
    _, _, out = trained
    raw = tomllib.loads((out / "config.toml").read_text())
    config = parse_config(raw)
    assert config.lora.alpha == 16.0 and config.optimization.steps == 4
    assert raw["model"]["source"] == BASE["model"]["source"]
