"""Data and models like upstream: 256-token captions, each clip's own frame rate, single-file
checkpoints in the original Lightricks layout, and image-to-video validation samples."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_trainer_support import RecordingRun, fit_clean, make_config, random_samples

from ltxq.config import parse_config
from ltxq.errors import ConfigError, TrainingError
from ltxq.trainer.demo_data import write_mp4
from ltxq.trainer.models import Components, build_tiny_random, load_components, make_pipeline
from ltxq.trainer.objective import Batch, Dataset, Geometry, training_loss
from ltxq.trainer.preprocess import prepare, prepare_dataset

BUCKET = "32x32x9"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LTXQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _clip(path: Path, fps: float, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return write_mp4(path, rng.integers(0, 256, (10, 32, 32, 3), np.uint8), fps=fps)


def _config(dataset: Path, **data: object):
    return parse_config({"model": {"source": "tiny-random"},
                         "data": {"dataset": str(dataset), "resolution": BUCKET, **data}})


# --- captions -------------------------------------------------------------------------------


def test_a_200_token_caption_reaches_the_text_encoder_whole(tmp_path: Path, tiny: Components,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    ds = tmp_path / "ds"
    _clip(ds / "a.mp4", 25)
    words = ("red green blue square circle moving right left " * 25).split()
    assert len(words) == 200  # each a whole word of the tiny vocabulary: one token each
    (ds / "a.txt").write_text(" ".join(words))
    seen: list[torch.Tensor] = []
    forward = tiny.text_encoder.forward
    monkeypatch.setattr(tiny.text_encoder, "forward",
                        lambda ids, *a, **k: seen.append(ids) or forward(ids, *a, **k))
    logs: list[str] = []
    (sample,) = prepare_dataset(_config(ds), tiny, log=logs.append)
    assert seen[0].shape == (1, 256)  # data.caption_max_tokens defaults to 256
    ids = tiny.tokenizer(" ".join(words)).input_ids
    assert len(ids) == 201  # 200 words and </s>
    assert seen[0][0, :201].tolist() == ids
    assert int(sample.prompt_mask.sum()) == 201
    assert not any("cut" in line for line in logs)
    # A shorter setting cuts, and says so.
    (cut,) = prepare_dataset(_config(ds, caption_max_tokens=128), tiny, log=logs.append)
    assert cut.prompt_embeds.shape == (128, 32) and bool(cut.prompt_mask.all())
    assert any("caption of a.mp4 cut from 201 to 128 tokens" in line for line in logs)


# --- frame rates ----------------------------------------------------------------------------


def test_each_clip_keeps_its_own_frame_rate(tmp_path: Path, tiny: Components) -> None:
    ds = tmp_path / "ds"
    _clip(ds / "a24.mp4", 24, seed=1)
    _clip(ds / "b30.mp4", 30, seed=2)
    _clip(ds / "c30.mp4", 30, seed=3)
    for name in ("a24", "b30", "c30"):
        (ds / f"{name}.txt").write_text("a red square")
    built = prepare(_config(ds), tiny, log=lambda _: None)
    rates = {s.source: s.frame_rate for s in built.samples}
    assert rates == {"a24.mp4": 24.0, "b30.mp4": 30.0, "c30.mp4": 30.0}
    again = prepare(_config(ds), tiny, log=lambda _: None)
    assert again.from_cache and {s.source: s.frame_rate for s in again.samples} == rates
    data = Dataset(again.samples, default_rate=25.0)
    assert data.common_frame_rate() == 30.0


def test_the_rope_time_scale_follows_each_clips_frame_rate(tiny: Components) -> None:
    """A batch of a 24 fps and a 30 fps clip: each sample's loss is what it is alone at its
    own rate (time scale 8/24 and 8/30 for the real VAE), not at one config value."""
    samples = random_samples(2)
    samples[0].frame_rate, samples[1].frame_rate = 24.0, 30.0
    data = Dataset(samples, default_rate=25.0)
    geometry = Geometry.of(tiny, data.latents, frame_rate=25.0)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((2, geometry.tokens, 8), generator=g)
    sigmas = torch.tensor([0.3, 0.7])
    clean = torch.zeros((2, geometry.tokens), dtype=torch.bool)
    with torch.no_grad():
        both = training_loss(tiny.transformer, data.batch([0, 1], torch.device("cpu")), geometry,
                             sigmas, noise, clean)
        alone = []
        for i, fps in ((0, 24.0), (1, 30.0)):
            one = data.batch([i], torch.device("cpu"))
            own = Geometry.of(tiny, data.latents, frame_rate=fps)
            alone.append(training_loss(tiny.transformer, Batch(one.latents, one.embeds,
                                                               one.mask),
                                       own, sigmas[i:i + 1], noise[i:i + 1], clean[i:i + 1]))
        at_25 = training_loss(tiny.transformer, Batch(*(t for t in (
            data.latents, data.embeds, data.mask))), geometry, sigmas, noise, clean)
    torch.testing.assert_close(both, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-6)
    assert abs(float(both) - float(at_25)) > 1e-6  # the rates do change the loss


def test_validation_frame_rate_defaults_to_the_datas(tmp_path: Path, tiny: Components) -> None:
    samples = random_samples(3)
    for s in samples:
        s.frame_rate = 30.0
    config = make_config(optimization={"steps": 1, "warmup_steps": 0},
                         validation={"prompts": ["a red square"], "video": "32x32x9",
                                     "inference_steps": 1}, checkpoints={"interval": 0})
    assert config.validation.frame_rate is None
    result = fit_clean(config, RecordingRun(tmp_path / "out"), tiny, samples)
    reader = iio.get_reader(str(result.validation_sample), format="FFMPEG")
    try:
        assert reader.get_meta_data()["fps"] == 30.0
    finally:
        reader.close()


# --- single-file checkpoints ----------------------------------------------------------------

# diffusers' single-file converter renames the original names this way; invert it.
_TO_ORIGINAL = (("proj_in", "patchify_proj"), ("time_embed", "adaln_single"),
                ("norm_q", "q_norm"), ("norm_k", "k_norm"))


# The VAE's block names in the original 0.9.0 layout (the inverse of diffusers' converter:
# the original numbers every resnet group, downsampler and channel change as its own block).
_VAE_TO_ORIGINAL = (
    ("encoder.down_blocks.0.downsamplers.0.", "encoder.down_blocks.1."),
    ("encoder.down_blocks.0.conv_out.", "encoder.down_blocks.2."),
    ("encoder.down_blocks.1.downsamplers.0.", "encoder.down_blocks.4."),
    ("encoder.down_blocks.1.conv_out.", "encoder.down_blocks.5."),
    ("encoder.down_blocks.2.downsamplers.0.", "encoder.down_blocks.7."),
    ("encoder.down_blocks.0.", "encoder.down_blocks.0."),
    ("encoder.down_blocks.1.", "encoder.down_blocks.3."),
    ("encoder.down_blocks.2.", "encoder.down_blocks.6."),
    ("encoder.down_blocks.3.", "encoder.down_blocks.8."),
    ("encoder.mid_block.", "encoder.down_blocks.9."),
    ("decoder.mid_block.", "decoder.up_blocks.0."),
    ("decoder.up_blocks.1.upsamplers.0.", "decoder.up_blocks.2."),
    ("decoder.up_blocks.2.conv_in.", "decoder.up_blocks.4."),
    ("decoder.up_blocks.2.upsamplers.0.", "decoder.up_blocks.5."),
    ("decoder.up_blocks.3.conv_in.", "decoder.up_blocks.7."),
    ("decoder.up_blocks.3.upsamplers.0.", "decoder.up_blocks.8."),
    ("decoder.up_blocks.0.", "decoder.up_blocks.1."),
    ("decoder.up_blocks.1.", "decoder.up_blocks.3."),
    ("decoder.up_blocks.2.", "decoder.up_blocks.6."),
    ("decoder.up_blocks.3.", "decoder.up_blocks.9."),
)
_VAE_NAMES = (("conv_shortcut.conv", "conv_shortcut"), ("resnets", "res_blocks"),
              ("norm3", "norm3.norm"), ("latents_mean", "per_channel_statistics.mean-of-means"),
              ("latents_std", "per_channel_statistics.std-of-means"))


def _original_vae_key(key: str) -> str:
    for new, old in _VAE_TO_ORIGINAL:
        if key.startswith(new):
            key = old + key[len(new):]
            break
    for new, old in _VAE_NAMES:
        key = key.replace(new, old)
    return "vae." + key


def write_single_file(components: Components, path: Path, with_vae: bool = True) -> Path:
    """Write COMPONENTS as Lightricks publishes a checkpoint: the transformer under
    `model.diffusion_model.` and the VAE under `vae.`, both in the original module names."""
    tensors = {}
    for key, value in components.transformer.state_dict().items():
        for new, old in _TO_ORIGINAL:
            key = key.replace(new, old)
        tensors["model.diffusion_model." + key] = value.contiguous()
    if with_vae:
        for key, value in components.vae.state_dict().items():
            tensors[_original_vae_key(key)] = value.contiguous()
        channels = components.vae.latents_mean.shape[0]  # statistics diffusers drops
        tensors["vae.per_channel_statistics.channel"] = torch.arange(channels)
        tensors["vae.per_channel_statistics.mean-of-stds"] = torch.ones(channels)
    save_file(tensors, str(path), metadata={"config": json.dumps({"note": "ltxq tiny"})})
    return path


@pytest.fixture(scope="module")
def single_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Components]:
    """A tiny single-file checkpoint (other weights than the base's) and its diffusers base."""
    root = tmp_path_factory.mktemp("single")
    make_pipeline(build_tiny_random()).save_pretrained(root / "base")
    other = build_tiny_random(seed=5)
    return write_single_file(other, root / "ltxv-tiny.safetensors"), root / "base", other


def test_single_file_source_loads_in_the_original_layout(
        single_file: tuple[Path, Path, Components]) -> None:
    file, base, other = single_file
    loaded = load_components(str(file), base=str(base))
    assert loaded.source == str(file)
    ours = loaded.transformer.state_dict()
    for key, value in other.transformer.state_dict().items():
        assert torch.equal(ours[key], value), key
    # The VAE comes from the file too (converted from the original layout), not the base.
    theirs = other.vae.state_dict()
    assert set(loaded.vae.state_dict()) == set(theirs)
    assert all(torch.equal(v, theirs[k]) for k, v in loaded.vae.state_dict().items())
    assert not torch.equal(build_tiny_random().vae.encoder.conv_in.conv.weight,
                           loaded.vae.encoder.conv_in.conv.weight)


def test_single_file_without_a_vae_takes_the_bases(tmp_path: Path,
                                                   single_file: tuple[Path, Path, Components]
                                                   ) -> None:
    _, base, other = single_file
    file = write_single_file(other, tmp_path / "transformer-only.safetensors", with_vae=False)
    loaded = load_components(str(file), base=str(base))
    base_vae = build_tiny_random().vae.state_dict()
    assert all(torch.equal(v, base_vae[k]) for k, v in loaded.vae.state_dict().items())


def test_single_file_source_trains_through_the_config(
        tmp_path: Path, single_file: tuple[Path, Path, Components]) -> None:
    file, base, _ = single_file
    (tmp_path / "ds").mkdir()
    config = parse_config({"model": {"source": str(file), "base": str(base)},
                           "data": {"dataset": str(tmp_path / "ds"), "resolution": BUCKET}},
                          require_dataset_exists=True)
    components = load_components(config.model.source, base=config.model.base)
    result = fit_clean(make_config(optimization={"steps": 2, "warmup_steps": 0},
                                   checkpoints={"interval": 0}),
                       RecordingRun(tmp_path / "out"), components, random_samples())
    assert result.lora_path is not None and result.lora_path.is_file()


def test_single_file_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         single_file: tuple[Path, Path, Components]) -> None:
    import huggingface_hub.constants

    file, _, _ = single_file
    # As on a machine without network, without the retries that take 20 s here.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"model.source.*model file not found"):
        parse_config({"model": {"source": str(tmp_path / "none.safetensors")},
                      "data": {"dataset": str(tmp_path)}}, require_dataset_exists=True)
    with pytest.raises(ConfigError, match=r"model.base.*only for a single-file"):
        parse_config({"model": {"source": "tiny-random", "base": "x"},
                      "data": {"dataset": "d"}})
    save_file({"w": torch.zeros(1)}, str(tmp_path / "sd.safetensors"))
    with pytest.raises(TrainingError, match="not an LTX-Video single-file checkpoint"):
        load_components(str(tmp_path / "sd.safetensors"))
    # No base given and no network: diffusers' inferred base cannot be fetched.
    with pytest.raises(TrainingError) as info:
        load_components(str(file))
    assert "\n" not in str(info.value) and str(file) in str(info.value)


# --- validation like the model is used ------------------------------------------------------


def _image(path: Path, rgb: tuple[int, int, int]) -> Path:
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[:, :16] = rgb
    iio.imwrite(path, frame)
    return path


def _first_frame(path: Path) -> np.ndarray:
    reader = iio.get_reader(str(path), format="FFMPEG")
    try:
        return np.asarray(reader.get_data(0), dtype=np.float32)
    finally:
        reader.close()


def test_image_to_video_validation_samples(tmp_path: Path, tiny: Components) -> None:
    red, blue = _image(tmp_path / "red.png", (230, 40, 40)), _image(tmp_path / "b.png",
                                                                     (40, 80, 230))
    common = {"prompts": ["a red square", "a red square"], "video": "32x32x9",
              "inference_steps": 2}
    t2v = fit_clean(make_config(optimization={"steps": 1, "warmup_steps": 0},
                                validation=common, checkpoints={"interval": 0}),
                    RecordingRun(tmp_path / "t2v"), tiny, random_samples())
    config = make_config(optimization={"steps": 1, "warmup_steps": 0},
                         validation={**common, "images": [str(red), str(blue)]},
                         checkpoints={"interval": 0})
    i2v = fit_clean(config, RecordingRun(tmp_path / "i2v"), tiny, random_samples())
    samples = sorted((tmp_path / "i2v" / "samples").iterdir())
    assert [p.name for p in samples] == ["step_000001_0.mp4", "step_000001_1.mp4"]
    first_red, first_blue = (_first_frame(p) for p in samples)
    assert first_red.shape == (32, 32, 3)
    # Same prompt and seed: only the conditioning image differs, and so does the video;
    # without images the same prompt gives the text-to-video sample.
    assert np.abs(first_red - first_blue).max() > 1.0
    assert np.abs(first_red - _first_frame(t2v.validation_sample)).max() > 1.0
    assert i2v.validation_sample == samples[0]


def test_image_count_must_match_the_prompts() -> None:
    with pytest.raises(ConfigError, match=r"validation.images.*one image per prompt"):
        make_config(validation={"prompts": ["a", "b"], "images": ["x.png"]})


def test_distilled_timestep_list_and_decode_settings(tmp_path: Path, tiny: Components) -> None:
    config = make_config(optimization={"steps": 1, "warmup_steps": 0},
                         validation={"prompts": ["a red square"], "video": "32x32x9",
                                     "timesteps": [1000, 993, 0.03], "decode_timestep": 0.05,
                                     "decode_noise_scale": 0.025},
                         checkpoints={"interval": 0})
    seen: list[int] = []
    result = fit_clean(config, _CountingRun(tmp_path / "out", seen, tiny), tiny,
                       random_samples())
    assert result.validation_sample is not None and result.validation_sample.is_file()
    assert seen == [3]  # three denoising steps: the list, not inference_steps (50)


class _CountingRun(RecordingRun):
    """Counts the transformer's denoising calls during validation (guidance: 2 per step)."""

    def __init__(self, out: Path, seen: list[int], components: Components) -> None:
        super().__init__(out)
        self._seen, self._calls = seen, 0
        transformer = components.transformer
        self._hook = transformer.register_forward_hook(self._count)
        self._transformer = transformer

    def _count(self, module: torch.nn.Module, args: object, out: object) -> None:
        if not module.training:
            self._calls += 1

    def sample_written(self, path: Path, step: int) -> None:
        super().sample_written(path, step)
        self._seen.append(self._calls)  # batched CFG: one call per step
        self._hook.remove()


# --- model families -------------------------------------------------------------------------


def test_ltx_video_family_is_the_trainers_path(tiny: Components) -> None:
    """The family interface gives what the trainer computes directly (LTX-2 slots in beside)."""
    from ltxq.trainer.family import FAMILIES, LTX_VIDEO, ModelFamily, family_of
    from ltxq.trainer.preprocess import encode_caption

    assert family_of(tiny) is LTX_VIDEO and set(FAMILIES) == {"ltx-video"}
    family: ModelFamily = LTX_VIDEO
    embeds, mask = family.encode_prompt(tiny, "a red square", 32)
    direct = encode_caption(tiny, "a red square", 32)
    assert torch.equal(embeds, direct[0]) and torch.equal(mask, direct[1])
    latents = family.encode_video(tiny, torch.zeros(3, 9, 32, 32))
    assert latents.shape == (8, 3, 8, 8)
    samples = random_samples(1)
    data = Dataset(samples)
    geometry = Geometry.of(tiny, data.latents, frame_rate=25.0)
    noise = torch.randn(1, geometry.tokens, 8, generator=torch.Generator().manual_seed(1))
    clean = torch.zeros(1, geometry.tokens, dtype=torch.bool)
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        x = LTX_VIDEO.pack(data.latents, tiny)
        noisy = 0.5 * x + 0.5 * noise
        pred = family.denoise(tiny, data.latents, noisy, torch.full((1, geometry.tokens), 500.0),
                              data.embeds, data.mask, geometry.rope_scale)
        loss = training_loss(tiny.transformer, data.batch([0], torch.device("cpu")), geometry,
                             sigma, noise, clean)
    torch.testing.assert_close(((pred - (noise - x)) ** 2).mean(), loss)


# --- several resolution buckets -------------------------------------------------------------


def test_clips_choose_the_bucket_nearest_their_shape() -> None:
    from ltxq.config import Resolution
    from ltxq.trainer.media import choose_bucket

    land, port = Resolution(768, 512, 49), Resolution(512, 768, 49)
    short, still = Resolution(768, 512, 25), Resolution(768, 512, 1)
    buckets = [land, port, short, still]
    assert choose_bucket(buckets, 1920, 1080, 100) == land
    assert choose_bucket(buckets, 1080, 1920, 100) == port
    assert choose_bucket(buckets, 1920, 1080, 30) == short  # too short for 49 frames
    assert choose_bucket(buckets, 1080, 1920, 30) == short  # the only one it fills
    assert choose_bucket(buckets, 1080, 1920, 1) == still
    assert choose_bucket([land, port], 1920, 1080, 20) is None


def test_portrait_and_landscape_clips_train_together(tmp_path: Path, tiny: Components) -> None:
    ds = tmp_path / "ds"
    rng = np.random.default_rng(0)
    ds.mkdir()
    write_mp4(ds / "wide.mp4",
              rng.integers(0, 256, (10, 36, 72, 3), np.uint8))
    write_mp4(ds / "tall.mp4", rng.integers(0, 256, (10, 72, 36, 3), np.uint8))
    write_mp4(ds / "short.mp4", rng.integers(0, 256, (5, 72, 36, 3), np.uint8))
    for name in ("wide", "tall", "short"):
        (ds / f"{name}.txt").write_text("a red square")
    logs: list[str] = []
    config = parse_config({
        "model": {"source": "tiny-random"},
        "data": {"dataset": str(ds), "resolution": ["64x32x9", "32x64x9"]},
        "lora": {"rank": 4}, "optimization": {"steps": 4, "batch_size": 1},
        "validation": {"interval": 0}, "checkpoints": {"interval": 0}})
    samples = prepare_dataset(config, tiny, log=logs.append)
    shapes = {s.source: tuple(s.latents.shape) for s in samples}
    # 64x32x9 -> latents [8, 3, 8, 16] (W/4 = 16 wide); 32x64x9 -> [8, 3, 16, 8].
    assert shapes == {"wide.mp4": (8, 3, 8, 16), "tall.mp4": (8, 3, 16, 8)}
    assert any("short.mp4: fits none of the buckets 64x32x9, 32x64x9 (5 frames)" in line
               for line in logs)
    run = RecordingRun(tmp_path / "out")
    result = fit_clean(config, run, tiny, samples)
    assert result.step == 4 and result.lora_path is not None
    assert all(np.isfinite(c[2]) for c in run.progress_calls)


def _two_bucket_samples() -> list:
    """Three landscape and two portrait samples of random latents (64x32x9, 32x64x9)."""
    samples = random_samples(5, seed=3)
    for i, s in enumerate(samples):
        shape = (8, 3, 8, 16) if i < 3 else (8, 3, 16, 8)
        s.latents = torch.randn(shape, generator=torch.Generator().manual_seed(i))
    return samples


def test_batches_come_from_one_bucket_and_resume_exactly(tmp_path: Path) -> None:
    """Batch 2 over two buckets: every batch is one bucket's, and a stopped and resumed run
    ends with the weights of an uninterrupted one."""
    from safetensors.torch import load_file

    from ltxq.trainer.sampling import BucketOrder

    order = BucketOrder([[0, 1, 2], [3, 4]], 2, seed=7)
    drawn = [order.take(2) for _ in range(6)]
    assert all(set(b) <= {0, 1, 2} or set(b) <= {3, 4} for b in drawn)
    assert {tuple(sorted(b)) for b in drawn} & {(3, 4)}  # the portrait pair comes up
    again = BucketOrder([[0, 1, 2], [3, 4]], 2, seed=7, position=6)
    assert again.take(2) == drawn[3]  # the position is the whole state
    config = make_config(data={"resolution": ["64x32x9", "32x64x9"]},
                         optimization={"steps": 6, "batch_size": 2,
                                       "gradient_accumulation_steps": 1, "warmup_steps": 0},
                         checkpoints={"interval": 2})
    whole = fit_clean(config, RecordingRun(tmp_path / "whole"), build_tiny_random(),
                      _two_bucket_samples())
    fit_clean(config, RecordingRun(tmp_path / "cut", stop_at=3), build_tiny_random(),
              _two_bucket_samples())
    resumed = fit_clean(config, RecordingRun(tmp_path / "cut"), build_tiny_random(),
                        _two_bucket_samples())
    a, b = load_file(whole.lora_path), load_file(resumed.lora_path)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    with pytest.raises(TrainingError, match="no resolution bucket has a whole batch of 4"):
        fit_clean(make_config(data={"resolution": ["64x32x9", "32x64x9"]},
                              optimization={"steps": 1, "batch_size": 4, "warmup_steps": 0},
                              checkpoints={"interval": 0}),
                  RecordingRun(tmp_path / "big"), build_tiny_random(), _two_bucket_samples())


def test_decode_settings_follow_the_vae_version() -> None:
    """0.9.1+ VAEs (timestep-conditioned) decode at 0.05 with noise 0.025 unless set."""
    from types import SimpleNamespace

    from ltxq.trainer.validation import _sampling_kwargs

    def components(conditioned: bool) -> SimpleNamespace:
        return SimpleNamespace(vae=SimpleNamespace(
            config=SimpleNamespace(timestep_conditioning=conditioned)))

    plain = make_config().validation
    assert _sampling_kwargs(plain, components(True)) == {
        "decode_timestep": 0.05, "decode_noise_scale": 0.025, "num_inference_steps": 2}
    assert _sampling_kwargs(plain, components(False))["decode_timestep"] == 0.0
    chosen = make_config(validation={"decode_timestep": 0.1, "timesteps": [1000, 500]})
    assert _sampling_kwargs(chosen.validation, components(True)) == {
        "decode_timestep": 0.1, "decode_noise_scale": None, "num_inference_steps": 2,
        "timesteps": [1000, 500]}


def test_preprocessing_cache_follows_the_single_file(tmp_path: Path,
                                                    single_file: tuple[Path, Path, Components]
                                                    ) -> None:
    _, base, other = single_file
    file = write_single_file(other, tmp_path / "mine.safetensors")
    ds = tmp_path / "ds"
    _clip(ds / "a.mp4", 25)
    (ds / "a.txt").write_text("a red square")
    config = parse_config({"model": {"source": str(file), "base": str(base)},
                           "data": {"dataset": str(ds), "resolution": BUCKET}})
    components = load_components(str(file), base=str(base))
    assert not prepare(config, components, log=lambda _: None).from_cache
    assert prepare(config, components, log=lambda _: None).from_cache
    write_single_file(build_tiny_random(seed=9), file)  # retrained weights, same name
    assert not prepare(config, components, log=lambda _: None).from_cache
