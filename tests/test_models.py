"""The model components: tiny-random built in code, local folders, clear loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ltxq.errors import TrainingError
from ltxq.trainer.models import (
    Components,
    build_tiny_random,
    load_components,
    make_pipeline,
)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_random_is_deterministic_and_leaves_global_rng_alone(tiny: Components) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_random()
    assert torch.equal(torch.rand(3), expected)  # building drew nothing from the global RNG
    for name in ("transformer", "vae", "text_encoder"):
        assert _same_weights(getattr(tiny, name), getattr(again, name))
    other = build_tiny_random(seed=1)
    assert not _same_weights(tiny.transformer, other.transformer)


def test_tiny_random_has_the_documented_shapes(tiny: Components) -> None:
    assert tiny.source == "tiny-random"
    assert tiny.max_sequence_length == 32
    assert tiny.transformer.config.in_channels == 8
    assert tiny.vae.config.latent_channels == 8
    # Every token id the tokenizer can produce must exist in the text encoder's embedding.
    assert len(tiny.tokenizer) <= tiny.text_encoder.config.vocab_size
    ids = tiny.tokenizer("A red square, moving RIGHT!", return_tensors="pt").input_ids
    assert int(ids.max()) < tiny.text_encoder.config.vocab_size
    assert tiny.tokenizer.tokenize("a red square") == ["▁a", "▁red", "▁square"]


def test_make_pipeline_samples_a_video(tiny: Components) -> None:
    pipe = make_pipeline(tiny)
    assert pipe.transformer is tiny.transformer
    frames = pipe("a red square moving right", negative_prompt="", num_frames=9, height=32,
                  width=32, num_inference_steps=2, guidance_scale=3.0, max_sequence_length=32,
                  generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert frames.shape == (1, 9, 32, 32, 3)


def test_load_components_from_a_saved_local_folder(tiny: Components, tmp_path: Path) -> None:
    make_pipeline(tiny).save_pretrained(tmp_path / "model")
    loaded = load_components(str(tmp_path / "model"))
    assert loaded.source == str(tmp_path / "model")
    assert loaded.max_sequence_length == 32  # from the saved tokenizer's model_max_length
    for name in ("transformer", "vae", "text_encoder"):
        assert _same_weights(getattr(tiny, name), getattr(loaded, name))
    assert loaded.tokenizer("a red square").input_ids == tiny.tokenizer("a red square").input_ids


def test_load_components_tiny_random_by_name_and_dtype() -> None:
    loaded = load_components("tiny-random", dtype=torch.bfloat16)
    assert loaded.transformer.dtype == torch.bfloat16
    assert loaded.vae.dtype == torch.bfloat16
    assert _same_weights(build_tiny_random().text_encoder,
                         load_components("tiny-random").text_encoder)


def test_missing_folder_is_a_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"model folder not found: .*nowhere"):
        load_components(str(tmp_path / "nowhere"))


def test_folder_without_a_model_is_a_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"no model_index.json"):
        load_components(str(tmp_path))
    index = {"_class_name": "StableDiffusionPipeline"}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(TrainingError, match=r"not an LTX-Video model.*StableDiffusionPipeline"):
        load_components(str(tmp_path))


def test_broken_ltx_folder_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "LTXPipeline"}))
    with pytest.raises(TrainingError) as info:
        load_components(str(tmp_path))
    assert "\n" not in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_unreachable_hub_id_is_one_line_error() -> None:
    # No network here; with network the id does not exist. Either way: one clear line.
    with pytest.raises(TrainingError) as info:
        load_components("ltxq-tests/no-such-model-3f9a")
    assert "ltxq-tests/no-such-model-3f9a" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_file_instead_of_a_folder_is_a_training_error(tmp_path: Path) -> None:
    (tmp_path / "ltx.bin").write_bytes(b"x")
    with pytest.raises(TrainingError, match="expected a diffusers model folder, got a file"):
        load_components(str(tmp_path / "ltx.bin"))
    # A .safetensors file is a single-file checkpoint: a broken one is one line too.
    (tmp_path / "ltx.safetensors").write_bytes(b"x")
    with pytest.raises(TrainingError, match=r"not a readable .safetensors file"):
        load_components(str(tmp_path / "ltx.safetensors"))
