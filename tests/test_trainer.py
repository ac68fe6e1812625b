"""The training loop on the tiny model: learning, schedule, stop, resume, keep_last."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer_support import RecordingRun, fit_clean, make_config, random_samples

from ltxq.errors import TrainingError
from ltxq.run import Outcome
from ltxq.trainer import checkpoint as ckpt
from ltxq.trainer.export import LORA_FILE
from ltxq.trainer.lora import add_lora, remove_lora
from ltxq.trainer.models import Components, build_tiny_random
from ltxq.trainer.objective import Batch, Geometry, training_loss
from ltxq.trainer.sampling import DataOrder, sample_sigmas, shift_for_sequence_length
from ltxq.trainer.schedule import lr_factor


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# --- pure pieces ------------------------------------------------------------------------


def test_lr_schedules() -> None:
    assert [lr_factor(s, 10, 3, "linear") for s in range(3)] == [0.25, 0.5, 0.75]
    assert lr_factor(3, 10, 3, "linear") == 1.0
    assert lr_factor(9, 10, 0, "linear") == pytest.approx(0.19)   # 1.0 -> 0.1 over the run
    assert lr_factor(10, 10, 0, "linear") == pytest.approx(0.1)
    assert lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(7, 10, 2, "constant") == 1.0
    with pytest.raises(ValueError):
        lr_factor(0, 10, 0, "sawtooth")


def test_sigma_sampling() -> None:
    assert shift_for_sequence_length(1024) == pytest.approx(0.95)
    assert shift_for_sequence_length(4096) == pytest.approx(2.05)
    g = torch.Generator().manual_seed(0)
    long = sample_sigmas(4000, 4096, "shifted_logit_normal", g)
    short = sample_sigmas(4000, 1024, "shifted_logit_normal", g)
    assert ((long > 0) & (long < 1)).all()
    # The mean of logit(sigma) is the shift: longer sequences train at higher noise.
    assert torch.logit(long).mean().item() == pytest.approx(2.05, abs=0.06)
    assert torch.logit(short).mean().item() == pytest.approx(0.95, abs=0.06)
    uniform = sample_sigmas(4000, 4096, "uniform", g)
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.03)
    again = sample_sigmas(5, 768, "shifted_logit_normal", torch.Generator().manual_seed(3))
    assert torch.equal(again, sample_sigmas(5, 768, "shifted_logit_normal",
                                            torch.Generator().manual_seed(3)))


def test_data_order_is_a_function_of_seed_and_position() -> None:
    order = DataOrder(5, seed=1)
    first = order.take(7)
    assert sorted(first[:5]) == [0, 1, 2, 3, 4]   # every sample once per epoch
    rest = order.take(8)
    resumed = DataOrder(5, seed=1, position=7)
    assert resumed.take(8) == rest
    assert DataOrder(5, seed=2).take(15) != first + rest


# --- learning ---------------------------------------------------------------------------


def test_loss_falls_on_a_fixed_batch() -> None:
    """Fixed latents, noise and sigma at 64x64x9 (768 tokens), lr 1e-2: the LoRA learns."""
    components = build_tiny_random()
    transformer = components.transformer
    params = add_lora(transformer, make_config().lora, seed=0)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 8, 3, 16, 16, generator=g)
    batch = Batch(latents, torch.randn(1, 32, 32, generator=g), torch.ones(1, 32, dtype=torch.bool))
    geometry = Geometry.of(components, latents, frame_rate=25.0)
    assert geometry.tokens == 768 and geometry.tokens_per_frame == 256
    noise = torch.randn(1, 768, 8, generator=g)
    sigmas = torch.tensor([0.6])
    clean = torch.zeros(1, 768, dtype=torch.bool)
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    transformer.train()
    losses = []
    for _ in range(100):
        loss = training_loss(transformer, batch, geometry, sigmas, noise, clean)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    remove_lora(transformer)
    print(f"fixed-batch loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.85 * losses[0], (losses[0], losses[-1])
    assert min(losses[-10:]) < min(losses[:10])


def test_first_frame_tokens_are_left_out_of_the_loss(tiny: Components) -> None:
    transformer = tiny.transformer
    add_lora(transformer, make_config().lora, seed=0)
    try:
        g = torch.Generator().manual_seed(1)
        latents = torch.randn(1, 8, 3, 8, 8, generator=g)
        batch = Batch(latents, torch.randn(1, 32, 32, generator=g),
                      torch.ones(1, 32, dtype=torch.bool))
        geometry = Geometry.of(tiny, latents, 25.0)
        noise = torch.randn(1, geometry.tokens, 8, generator=g)
        condition = torch.zeros(1, geometry.tokens, dtype=torch.bool)
        condition[:, :geometry.tokens_per_frame] = True
        with torch.no_grad():
            base = training_loss(transformer, batch, geometry, torch.tensor([0.5]), noise,
                                 condition)
            # Changing the noise of the conditioned (clean) tokens changes nothing.
            noise2 = noise.clone()
            noise2[:, :geometry.tokens_per_frame] += 5.0
            same = training_loss(transformer, batch, geometry, torch.tensor([0.5]), noise2,
                                 condition)
            other = training_loss(transformer, batch, geometry, torch.tensor([0.5]), noise2,
                                  torch.zeros_like(condition))
        assert torch.allclose(base, same) and not torch.allclose(base, other)
    finally:
        remove_lora(transformer)


# --- the loop ---------------------------------------------------------------------------


def test_fit_reports_progress_and_writes_outputs(tmp_path: Path, tiny: Components) -> None:
    config = make_config(optimization={"steps": 6, "warmup_steps": 0},
                         checkpoints={"interval": 2, "keep_last": 2})
    run = RecordingRun(tmp_path / "out")
    result = fit_clean(config, run, tiny, random_samples())
    assert result.outcome is Outcome.COMPLETED and result.step == 6
    assert [p[0] for p in run.progress_calls] == [1, 2, 3, 4, 5, 6]
    assert all(p[1] == 6 and math.isfinite(p[2]) and p[4] > 0 for p in run.progress_calls)
    lrs = [p[3] for p in run.progress_calls]
    assert lrs == pytest.approx([5e-3 * lr_factor(s, 6, 0, "linear") for s in range(6)])
    assert run.stop_checks >= 6
    assert [s for _, s in run.checkpoints] == [2, 4, 6]
    # keep_last = 2
    assert [c.step for c in ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")] == [4, 6]
    assert result.checkpoint == tmp_path / "out" / "checkpoints" / "step_00006"
    assert result.lora_path == tmp_path / "out" / LORA_FILE and result.lora_path.is_file()
    assert (tmp_path / "out" / "config.toml").is_file()
    assert not tiny.transformer.training and not any(
        p.requires_grad for p in tiny.transformer.parameters())


def test_stop_and_resume_equals_uninterrupted(tmp_path: Path, tiny: Components) -> None:
    config = make_config()
    samples = random_samples()
    whole_run = RecordingRun(tmp_path / "whole")
    whole = fit_clean(config, whole_run, tiny, samples)
    assert whole.outcome is Outcome.COMPLETED

    first = RecordingRun(tmp_path / "parts", stop_at=6)   # between checkpoints 4 and 8
    stopped = fit_clean(config, first, tiny, samples)
    assert stopped.outcome is Outcome.STOPPED and stopped.step == 6
    assert stopped.lora_path is None
    assert stopped.checkpoint.name == "step_00006"
    assert not (tmp_path / "parts" / LORA_FILE).exists()

    second = RecordingRun(tmp_path / "parts")
    resumed = fit_clean(config, second, tiny, samples)
    assert resumed.outcome is Outcome.COMPLETED and resumed.step == 12
    assert [p[0] for p in second.progress_calls] == list(range(7, 13))
    assert any("resuming" in line for line in second.logs)
    diff = _max_diff(load_file(whole.lora_path), load_file(resumed.lora_path))
    print("max abs diff", diff)
    assert diff <= 1e-7, diff
    # Every step saw the same batch, sigmas, noise and coins: the same losses.
    assert ([p[2] for p in first.progress_calls + second.progress_calls]
            == [p[2] for p in whole_run.progress_calls])


def test_stop_during_validation_then_resume(tmp_path: Path, tiny: Components) -> None:
    config = make_config(optimization={"steps": 8},
                         validation={"prompts": ["a red square", "a blue circle"],
                                     "interval": 4, "inference_steps": 3},
                         checkpoints={"interval": 0})
    samples = random_samples()
    whole = fit_clean(config, RecordingRun(tmp_path / "whole"), tiny, samples)
    assert sorted(p.name for p in (tmp_path / "whole" / "samples").iterdir()) == [
        "step_000004_0.mp4", "step_000004_1.mp4", "step_000008_0.mp4", "step_000008_1.mp4"]

    run = RecordingRun(tmp_path / "parts", stop_at=4)
    stopped = fit_clean(config, run, tiny, samples)
    # The stop came between denoising steps of the step-4 validation: no video, a checkpoint.
    assert stopped.outcome is Outcome.STOPPED and stopped.step == 4
    assert not (tmp_path / "parts" / "samples").exists() or not any(
        (tmp_path / "parts" / "samples").glob("*.mp4"))
    assert stopped.checkpoint.name == "step_00004"

    again = RecordingRun(tmp_path / "parts")
    resumed = fit_clean(config, again, tiny, samples)
    assert resumed.outcome is Outcome.COMPLETED
    # The interrupted validation is rendered first, then training continues.
    assert [s for _, s in again.samples] == [4, 4, 8, 8]
    assert resumed.validation_sample == tmp_path / "parts" / "samples" / "step_000008_0.mp4"
    assert _max_diff(load_file(whole.lora_path), load_file(resumed.lora_path)) <= 1e-7


def test_resume_refuses_a_different_lora(tmp_path: Path, tiny: Components) -> None:
    samples = random_samples()
    fit_clean(make_config(optimization={"steps": 4}), RecordingRun(tmp_path / "o", stop_at=2),
              tiny, samples)
    with pytest.raises(TrainingError, match="rank 4 -> 8"):
        fit_clean(make_config(optimization={"steps": 4}, lora={"rank": 8}),
                  RecordingRun(tmp_path / "o"), tiny, samples)


def _corrupt(folder: Path, what: str) -> None:
    if what == "lora":
        os.truncate(folder / ckpt.LORA_FILE, 100)
    elif what == "state":
        os.truncate(folder / ckpt.STATE_FILE, (folder / ckpt.STATE_FILE).stat().st_size // 2)
    else:
        (folder / ckpt.META_FILE).write_text('{"step": 1')


@pytest.mark.parametrize("what", ["lora", "state", "meta"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path, tiny: Components,
                                                              what: str) -> None:
    config = make_config()
    samples = random_samples()
    whole = fit_clean(config, RecordingRun(tmp_path / "whole"), tiny, samples)
    root = tmp_path / "parts" / "checkpoints"
    fit_clean(config, RecordingRun(tmp_path / "parts", stop_at=10), tiny, samples)
    assert [c.step for c in ckpt.list_checkpoints(root)] == [8, 10]
    _corrupt(root / "step_00010", what)

    again = RecordingRun(tmp_path / "parts")
    resumed = fit_clean(config, again, tiny, samples)
    assert resumed.outcome is Outcome.COMPLETED and resumed.step == 12
    log = "\n".join(again.logs)
    assert "checkpoint step_00010 is damaged (" in log and "trying the previous one" in log
    assert f"resuming from {root / 'step_00008'} (step 8 of 12)" in log
    assert [p[0] for p in again.progress_calls] == list(range(9, 13))
    assert _max_diff(load_file(whole.lora_path), load_file(resumed.lora_path)) <= 1e-7
    # The damaged folder is kept aside, out of keep_last's way; pruning went on normally.
    assert len(list(root.glob("damaged-step_00010-*"))) == 1
    assert [c.step for c in ckpt.list_checkpoints(root)] == [8, 12]


def test_no_loadable_checkpoint_starts_from_scratch(tmp_path: Path, tiny: Components) -> None:
    config = make_config(optimization={"steps": 6}, checkpoints={"interval": 2, "keep_last": 2})
    samples = random_samples()
    whole = fit_clean(config, RecordingRun(tmp_path / "whole"), tiny, samples)
    root = tmp_path / "parts" / "checkpoints"
    fit_clean(config, RecordingRun(tmp_path / "parts", stop_at=4), tiny, samples)
    for c in ckpt.list_checkpoints(root):
        _corrupt(c.path, "lora")
    again = RecordingRun(tmp_path / "parts")
    result = fit_clean(config, again, tiny, samples)
    assert "no checkpoint could be loaded: starting from scratch" in again.logs
    assert [p[0] for p in again.progress_calls] == list(range(1, 7))
    assert _max_diff(load_file(whole.lora_path), load_file(result.lora_path)) <= 1e-7
    assert [c.step for c in ckpt.list_checkpoints(root)] == [4, 6]


@pytest.mark.parametrize(("change", "expected"), [
    ({"optimization": {"learning_rate": 1e-3}}, "optimization.learning_rate 0.005 -> 0.001"),
    ({"data": {"dataset": "/elsewhere"}}, "data.dataset '/nonexistent' -> '/elsewhere'"),
    ({"optimization": {"steps": 4}}, "optimization.steps 12 -> 4"),
    ({"optimization": {"scheduler": "cosine"}}, "optimization.scheduler 'linear' -> 'cosine'"),
    ({"resources": {"processes": 2}}, "optimization.batch_size*resources.processes 2 -> 4"),
])
def test_resume_refuses_other_weight_settings(tmp_path: Path, tiny: Components,
                                              change: dict, expected: str) -> None:
    samples = random_samples()
    out = tmp_path / "o"
    fit_clean(make_config(), RecordingRun(out, stop_at=8), tiny, samples)
    written = (out / "config.toml").read_text()
    with pytest.raises(TrainingError) as info:
        fit_clean(make_config(**change), RecordingRun(out), tiny, samples)
    message = str(info.value)
    assert expected in message and "--output-dir" in message and "\n" not in message
    assert (out / "config.toml").read_text() == written  # not replaced by the refused config


def test_resume_allows_other_validation_and_checkpoint_settings(tmp_path: Path,
                                                                tiny: Components) -> None:
    samples = random_samples()
    whole = fit_clean(make_config(), RecordingRun(tmp_path / "whole"), tiny, samples)
    fit_clean(make_config(), RecordingRun(tmp_path / "o", stop_at=6), tiny, samples)
    changed = make_config(checkpoints={"interval": 3, "keep_last": 3},
                          validation={"inference_steps": 5}, optimization={
                              "gradient_checkpointing": True})
    resumed = fit_clean(changed, RecordingRun(tmp_path / "o"), tiny, samples)
    assert resumed.outcome is Outcome.COMPLETED
    assert _max_diff(load_file(whole.lora_path), load_file(resumed.lora_path)) <= 1e-6


def test_checkpoint_without_settings_record_resumes_as_before(tmp_path: Path,
                                                              tiny: Components) -> None:
    samples = random_samples()
    out = tmp_path / "o"
    fit_clean(make_config(), RecordingRun(out, stop_at=8), tiny, samples)
    meta_path = out / "checkpoints" / "step_00008" / ckpt.META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["settings"]
    meta_path.write_text(json.dumps(meta))
    again = RecordingRun(out)
    result = fit_clean(make_config(optimization={"learning_rate": 1e-3}), again, tiny, samples)
    assert result.outcome is Outcome.COMPLETED and result.step == 12
    assert any("resuming from" in line and "(step 8 of 12)" in line for line in again.logs)


def test_complete_run_says_already_complete(tmp_path: Path, tiny: Components) -> None:
    samples = random_samples()
    out = tmp_path / "o"
    fit_clean(make_config(), RecordingRun(out), tiny, samples)
    again = RecordingRun(out)
    result = fit_clean(make_config(), again, tiny, samples)
    assert result.outcome is Outcome.COMPLETED and result.step == 12
    assert any(line.endswith("already complete at step 12") for line in again.logs)
    assert not any("resuming" in line for line in again.logs)
    assert again.progress_calls == []


def test_image_bucket_never_conditions_its_only_frame(tmp_path: Path, tiny: Components) -> None:
    g = torch.Generator().manual_seed(0)
    samples = random_samples(2)
    for s in samples:
        s.latents = torch.randn(8, 1, 8, 8, generator=g)
    config = make_config(optimization={"steps": 3, "first_frame_conditioning_p": 1.0,
                                       "warmup_steps": 0},
                         checkpoints={"interval": 0})
    run = RecordingRun(tmp_path / "img")
    assert fit_clean(config, run, tiny, samples).outcome is Outcome.COMPLETED
    assert all(math.isfinite(p[2]) for p in run.progress_calls)


def test_gradient_checkpointing_gives_the_same_weights(tmp_path: Path, tiny: Components) -> None:
    samples = random_samples()
    base = make_config(optimization={"steps": 3}, lora={"dropout": 0.0},
                       checkpoints={"interval": 0})
    plain = fit_clean(base, RecordingRun(tmp_path / "a"), tiny, samples)
    ckpt_config = make_config(optimization={"steps": 3, "gradient_checkpointing": True},
                              lora={"dropout": 0.0}, checkpoints={"interval": 0})
    checkpointed = fit_clean(ckpt_config, RecordingRun(tmp_path / "b"), tiny, samples)
    assert not tiny.transformer.gradient_checkpointing  # handed back clean
    assert _max_diff(load_file(plain.lora_path), load_file(checkpointed.lora_path)) < 1e-5


def test_a_user_error_keeps_the_warm_model(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ltxq.trainer import train, warm

    monkeypatch.setenv("LTXQ_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    config = make_config(data={"dataset": str(tmp_path / "empty")})

    def fails_with_no_media() -> RecordingRun:
        run = RecordingRun(tmp_path / "out")
        with pytest.raises(TrainingError, match="no usable media"):
            train(config, run)
        return run

    warm.clear()
    fails_with_no_media()
    assert any("already loaded (warm)" in line for line in fails_with_no_media().logs)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr("ltxq.trainer.loop.prepare_dataset", broken)
        with pytest.raises(RuntimeError):
            train(config, RecordingRun(tmp_path / "out"))
    # Unknown state: never lent again, the next job loads the model afresh.
    assert not any("warm" in line for line in fails_with_no_media().logs)
