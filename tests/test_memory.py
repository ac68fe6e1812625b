"""Memory: T5 and the VAE off the device while steps run, prompts encoded once, the optional
8-bit parts (real on CPU when installed, one clear line when not), and the peak memory report
from the trainer to `status --json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_trainer_support import RecordingRun, fit_clean, make_config, random_samples

from ltxq.errors import TrainingError
from ltxq.trainer import memory
from ltxq.trainer.demo_data import write_demo_dataset
from ltxq.trainer.models import build_tiny_random, load_components


def _has(package: str) -> bool:
    try:
        __import__(package)
    except ImportError:
        return False
    return True


# --- placement ------------------------------------------------------------------------------


def test_t5_and_vae_wait_on_the_cpu() -> None:
    loaded = load_components("tiny-random", device="cpu")
    assert loaded.device == torch.device("cpu")
    for module in (loaded.vae, loaded.text_encoder):
        assert next(module.parameters()).device.type == "cpu"


def test_on_device_brings_a_module_and_takes_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: record where the module is sent (cuda:0 for the block, then home)."""
    module = torch.nn.Linear(2, 2)
    moves: list[str] = []
    monkeypatch.setattr(module, "to", lambda device: moves.append(str(device)) or module)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: moves.append("empty_cache"))
    with memory.on_device(module, torch.device("cuda:0")):
        assert moves == ["cuda:0"]
    assert moves == ["cuda:0", "cpu", "empty_cache"]
    with memory.on_device(module, torch.device("cpu")):  # already there: no move
        pass
    with memory.on_device(None, torch.device("cuda:0")):  # a pipeline without T5
        pass
    assert moves == ["cuda:0", "cpu", "empty_cache"]


def test_validation_prompts_are_encoded_once_per_run(tmp_path: Path) -> None:
    """Two prompts rendered at 3 steps: T5 runs 3 times in all (2 prompts and the negative),
    not 3 x 2 x 2 times, and never during a training step."""
    tiny = build_tiny_random()
    calls: list[int] = []
    tiny.text_encoder.register_forward_hook(lambda m, a, o: calls.append(1))
    config = make_config(optimization={"steps": 3, "warmup_steps": 0},
                         validation={"prompts": ["a red square", "a blue circle"], "interval": 1,
                                     "inference_steps": 1, "video": "32x32x9"},
                         checkpoints={"interval": 0})
    run = RecordingRun(tmp_path / "out")
    fit_clean(config, run, tiny, random_samples())
    assert len(run.samples) == 6 and len(calls) == 3


# --- optional extras ------------------------------------------------------------------------


@pytest.mark.parametrize(("package", "settings", "extra"), [
    ("bitsandbytes", {"optimization": {"optimizer": "adamw8bit"}}, "adamw8bit"),
    ("torchao", {"model": {"quantization": "int8"}}, "quantization"),
    ("torchao", {"model": {"text_encoder_8bit": True}}, "quantization"),
])
def test_a_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               package: str, settings: dict, extra: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    config = make_config(optimization={"steps": 1, "warmup_steps": 0,
                                       **settings.get("optimization", {})},
                         model=settings.get("model", {}), checkpoints={"interval": 0})
    from ltxq.trainer.loop import load_options

    with pytest.raises(TrainingError) as info:
        if "optimization" in settings:
            fit_clean(config, RecordingRun(tmp_path / "out"), build_tiny_random(),
                      random_samples())
        else:
            load_components("tiny-random", **load_options(config))
    text = str(info.value)
    assert "\n" not in text and f"pip install 'ltxq[{extra}]'" in text and package in text


@pytest.mark.skipif(not _has("bitsandbytes"), reason="bitsandbytes not installed (ltxq[adamw8bit])")
def test_adamw8bit_trains_on_cpu(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    tiny = build_tiny_random()
    config = make_config(optimization={"steps": 3, "warmup_steps": 0, "optimizer": "adamw8bit"},
                         checkpoints={"interval": 0})
    run = RecordingRun(tmp_path / "out")
    before = {n: p.clone() for n, p in tiny.transformer.named_parameters()}
    from ltxq.trainer import loop

    seen: list[type] = []
    real = loop.make_optimizer

    def recording(params: list, opt: object) -> torch.optim.Optimizer:
        made = real(params, opt)
        seen.append(type(made))
        return made

    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "make_optimizer", recording)
    try:
        result = fit_clean(config, run, tiny, random_samples())
    finally:
        mp.undo()
    assert seen == [bnb.optim.AdamW8bit]
    assert result.lora_path is not None and all(torch.isfinite(torch.tensor(c[2]))
                                                for c in run.progress_calls)
    after = dict(tiny.transformer.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # the base stays untouched


@pytest.mark.skipif(not _has("torchao"), reason="torchao not installed (ltxq[quantization])")
@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantized_transformer_trains_a_lora_on_cpu(tmp_path: Path, mode: str) -> None:
    config = make_config(optimization={"steps": 2, "warmup_steps": 0},
                         model={"quantization": mode}, checkpoints={"interval": 0})
    from ltxq.trainer.loop import load_options

    tiny = load_components("tiny-random", **load_options(config))
    kinds = {name: type(m.weight).__name__ for name, m in tiny.transformer.named_modules()
             if isinstance(m, torch.nn.Linear) and ".transformer_blocks." in f".{name}"}
    ff = kinds["transformer_blocks.0.ff.net.2"]
    to_q = kinds["transformer_blocks.0.attn1.to_q"]
    assert ff != "Parameter"  # quantized
    assert (to_q == "Parameter") == (mode == "fp8")  # fp8 leaves the LoRA targets alone
    run = RecordingRun(tmp_path / "out")
    result = fit_clean(config, run, tiny, random_samples())
    assert result.lora_path is not None
    assert all(torch.isfinite(torch.tensor(c[2])) for c in run.progress_calls)


@pytest.mark.skipif(not _has("torchao"), reason="torchao not installed (ltxq[quantization])")
def test_text_encoder_8bit_encodes_close_to_full_precision() -> None:
    from ltxq.trainer.preprocess import encode_caption

    full = build_tiny_random()
    small = load_components("tiny-random", text_encoder_8bit=True)
    a, mask = encode_caption(full, "a red square moving right", 32)
    b, _ = encode_caption(small, "a red square moving right", 32)
    assert (a - b)[mask].abs().max() < 0.1 * a[mask].abs().max()


# --- peak memory ----------------------------------------------------------------------------


def test_fit_reports_peak_memory(tmp_path: Path) -> None:
    run = RecordingRun(tmp_path / "out")
    result = fit_clean(make_config(optimization={"steps": 1, "warmup_steps": 0},
                                   checkpoints={"interval": 0}),
                       run, build_tiny_random(), random_samples())
    assert result.peak_memory_gib is not None and 0.05 < result.peak_memory_gib < 64
    assert any(line.startswith("peak resident memory (CPU): ") for line in run.logs)


def test_status_json_reports_the_jobs_peak_memory(tmp_path: Path, env: object) -> None:
    """A real training job through a real daemon: the job log and `status --json` say it."""
    write_demo_dataset(env.dataset, clips=2, width=48, height=40)
    config = env.config(steps=2)
    text = config.read_text().replace('resolution = "64x64x9"', 'resolution = "32x32x9"')
    config.write_text(text.replace('video = "64x64x9"', 'video = "32x32x9"'))
    job = env.submit(str(config))
    p = subprocess.run([sys.executable, "-m", "ltxq", "daemon", "--trainer", "ltxq.trainer:train",
                        "--once"], cwd=env.root, env={**env.env, "LTXQ_CACHE": str(tmp_path / "c")},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    record = env.job(job)
    assert record["state"] == "done", json.dumps(record)
    assert isinstance(record["peak_memory_gib"], float) and record["peak_memory_gib"] > 0.05
    assert "peak resident memory (CPU)" in env.run("logs", str(job)).stdout


def test_peak_memory_meta_is_range_checked() -> None:
    from ltxq.config import ConfigError
    from ltxq.job import parse_meta

    assert parse_meta({"peak_memory_gib": 1.5}).peak_memory_gib == 1.5
    for bad in (-1.0, "big", float("nan")):
        with pytest.raises(ConfigError, match=r"job\.peak_memory_gib"):
            parse_meta({"peak_memory_gib": bad})


