"""Preprocessing real media files with the tiny model, and its on-disk cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as iio
import numpy as np
import pytest
import torch

from ltxq.config import TrainingConfig, parse_config
from ltxq.errors import TrainingError
from ltxq.trainer import preprocess
from ltxq.trainer.demo_data import write_demo_dataset, write_mp4
from ltxq.trainer.models import Components
from ltxq.trainer.preprocess import PreparedSample, prepare, prepare_dataset, preprocess_cli

BUCKET = "32x32x9"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LTXQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class Recorder:
    """A log and an encode counter."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lines: list[str] = []
        self.encoded = 0
        real = preprocess.encode_clip

        def counting(components: Components, clip: torch.Tensor) -> torch.Tensor:
            self.encoded += 1
            return real(components, clip)

        monkeypatch.setattr(preprocess, "encode_clip", counting)

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    return Recorder(monkeypatch)


def _config(dataset: Path, **data: str) -> TrainingConfig:
    return parse_config({"model": {"source": "tiny-random"},
                         "data": {"dataset": str(dataset), "resolution": BUCKET, **data}})


def _video(path: Path, frames: int = 10, width: int = 50, height: int = 38,
           seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_mp4(path, rng.integers(0, 256, (frames, height, width, 3), np.uint8))
    return path


def _captions(samples: list[PreparedSample]) -> dict[str, str]:
    return {s.source: s.caption for s in samples}


# --- caption forms ------------------------------------------------------------------------


def test_sidecar_captions_and_sample_shapes(tmp_path: Path, tiny: Components,
                                            rec: Recorder) -> None:
    ds = tmp_path / "ds"
    _video(ds / "a.mp4", frames=10, width=50, height=38)
    _video(ds / "sub" / "b.mp4", frames=14, width=36, height=70, seed=1)
    (ds / "a.txt").write_text("a red square\n")
    (ds / "sub" / "b.txt").write_text("a blue circle")
    samples = prepare_dataset(_config(ds), tiny, log=rec)
    assert _captions(samples) == {"a.mp4": "a red square", "sub/b.mp4": "a blue circle"}
    for s in samples:
        # 32x32x9 through the tiny VAE (4x space, 4x time): 8 channels, 3 frames, 8x8.
        assert s.latents.shape == (8, 3, 8, 8) and s.latents.dtype == torch.float32
        # data.caption_max_tokens defaults to 256 tokens, as upstream.
        assert s.prompt_embeds.shape == (256, 32) and s.prompt_embeds.dtype == torch.float32
        assert s.prompt_mask.shape == (256,)
        assert torch.isfinite(s.latents).all()
    # "a red square" + </s> are the only real tokens; the rest is padding.
    assert samples[0].prompt_mask.tolist() == [True] * 4 + [False] * 252
    assert rec.encoded == 2


def test_captions_json(tmp_path: Path, tiny: Components, rec: Recorder) -> None:
    ds = tmp_path / "ds"
    _video(ds / "clips" / "one.mp4")
    _video(ds / "two.mp4", seed=2)
    (ds / "two.txt").write_text("the sidecar loses to the table")
    (ds / "captions.json").write_text(json.dumps([
        {"media_path": "clips/one.mp4", "caption": "first"},
        {"media_path": "two.mp4", "caption": "second"}]))
    assert _captions(prepare_dataset(_config(ds), tiny, log=rec)) == {
        "clips/one.mp4": "first", "two.mp4": "second"}


def test_captions_jsonl(tmp_path: Path, tiny: Components, rec: Recorder) -> None:
    ds = tmp_path / "ds"
    _video(ds / "one.mp4")
    iio.mimsave(ds / "odd.gif", list(np.random.default_rng(3).integers(
        0, 256, (9, 45, 71, 3), np.uint8)))
    (ds / "captions.jsonl").write_text('{"media_path": "one.mp4", "caption": "first"}\n'
                                       '{"media_path": "odd.gif", "caption": "a gif"}\n')
    assert _captions(prepare_dataset(_config(ds), tiny, log=rec)) == {
        "one.mp4": "first", "odd.gif": "a gif"}


def test_captions_csv_and_prefix(tmp_path: Path, tiny: Components, rec: Recorder) -> None:
    ds = tmp_path / "ds"
    _video(ds / "one.mp4")
    (ds / "captions.csv").write_text('media_path,caption\none.mp4,"a red square, moving"\n')
    samples = prepare_dataset(_config(ds, caption_prefix="TOK"), tiny, log=rec)
    assert _captions(samples) == {"one.mp4": "TOK a red square, moving"}


def test_image_dataset_in_a_one_frame_bucket(tmp_path: Path, tiny: Components,
                                             rec: Recorder) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    iio.imwrite(ds / "pic.png", np.random.default_rng(0).integers(0, 256, (45, 71, 3), np.uint8))
    (ds / "pic.txt").write_text("a picture")
    samples = prepare_dataset(_config(ds, resolution="64x32x1"), tiny, log=rec)
    assert samples[0].latents.shape == (8, 1, 8, 16)


# --- skipping -------------------------------------------------------------------------------


def test_bad_files_are_skipped_by_name(tmp_path: Path, tiny: Components, rec: Recorder) -> None:
    ds = tmp_path / "ds"
    _video(ds / "good.mp4", frames=9)
    _video(ds / "short.mp4", frames=5)
    (ds / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really" * 20)
    _video(ds / "uncaptioned.mp4")
    iio.imwrite(ds / "still.png", np.zeros((40, 40, 3), np.uint8))
    (ds / "notes.md").write_text("not media: ignored")
    for name in ("good", "short", "corrupt", "still"):
        (ds / f"{name}.txt").write_text(f"caption of {name}")
    progress: list[tuple[int, int]] = []
    samples = prepare_dataset(_config(ds), tiny, log=rec,
                              progress=lambda done, total: progress.append((done, total)))
    assert [s.source for s in samples] == ["good.mp4"]
    log = rec.text()
    assert "skipped short.mp4: too short: 5 frames" in log
    assert "skipped corrupt.mp4: unreadable" in log
    assert "skipped uncaptioned.mp4: no caption (no uncaptioned.txt" in log
    assert "skipped still.png: an image" in log
    assert "notes.md" not in log
    assert progress == [(i, 5) for i in range(6)]


def test_table_entry_without_file_is_reported(tmp_path: Path, tiny: Components,
                                              rec: Recorder) -> None:
    ds = tmp_path / "ds"
    _video(ds / "one.mp4")
    (ds / "captions.jsonl").write_text('{"media_path": "one.mp4", "caption": "x"}\n'
                                       '{"media_path": "gone.mp4", "caption": "y"}\n')
    assert len(prepare_dataset(_config(ds), tiny, log=rec)) == 1
    assert "gone.mp4" in rec.text()


def test_nothing_usable_is_a_training_error(tmp_path: Path, tiny: Components,
                                            rec: Recorder, cache: Path) -> None:
    ds = tmp_path / "ds"
    _video(ds / "short.mp4", frames=3)
    (ds / "short.txt").write_text("too short")
    (ds / "broken.webm").write_bytes(b"garbage")
    (ds / "broken.txt").write_text("broken")
    with pytest.raises(TrainingError, match=r"no usable media in .*ds: 2 found, 2 skipped"):
        prepare_dataset(_config(ds), tiny, log=rec)
    assert "skipped short.mp4" in rec.text() and "skipped broken.webm" in rec.text()
    assert not cache.exists() or not any(cache.iterdir())  # nothing cached for a failure


def test_missing_or_empty_dataset_is_a_training_error(tmp_path: Path, tiny: Components) -> None:
    with pytest.raises(TrainingError, match="dataset folder not found"):
        prepare_dataset(_config(tmp_path / "nowhere"), tiny, log=lambda _: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no usable media"):
        prepare_dataset(_config(tmp_path / "empty"), tiny, log=lambda _: None)


# --- the cache ------------------------------------------------------------------------------


def test_second_call_uses_the_cache(tmp_path: Path, tiny: Components, rec: Recorder,
                                    cache: Path) -> None:
    ds = write_demo_dataset(tmp_path / "demo", clips=3, frames=9, width=48, height=40)
    _video(ds / "short.mp4", frames=4)
    (ds / "short.txt").write_text("short")
    first = prepare(_config(ds), tiny, log=rec)
    assert rec.encoded == 3 and not first.from_cache
    assert first.cache_dir.parent == cache and (first.cache_dir / "manifest.json").is_file()
    assert not list(cache.glob(".tmp-*"))
    rec.lines.clear()
    second = prepare(_config(ds), tiny, log=rec)
    assert rec.encoded == 3, "the second call must not encode again"
    assert second.from_cache and second.cache_dir == first.cache_dir
    assert "preprocessing cache used: 3 samples" in rec.text()
    assert "skipped short.mp4" in rec.text()  # skips are still reported from the manifest
    for a, b in zip(first.samples, second.samples, strict=True):
        assert (a.source, a.caption) == (b.source, b.caption)
        assert torch.equal(a.latents, b.latents)
        assert torch.equal(a.prompt_embeds, b.prompt_embeds)
        assert torch.equal(a.prompt_mask, b.prompt_mask)


def test_cache_misses_when_data_or_settings_change(tmp_path: Path, tiny: Components,
                                                   rec: Recorder) -> None:
    ds = tmp_path / "ds"
    _video(ds / "a.mp4")
    (ds / "a.txt").write_text("one")
    dirs = {prepare(_config(ds), tiny, log=rec).cache_dir}
    (ds / "a.txt").write_text("one, edited")
    dirs.add(prepare(_config(ds), tiny, log=rec).cache_dir)
    dirs.add(prepare(_config(ds, caption_prefix="TOK"), tiny, log=rec).cache_dir)
    dirs.add(prepare(_config(ds, resolution="64x32x9"), tiny, log=rec).cache_dir)
    _video(ds / "b.mp4", seed=4)
    (ds / "b.txt").write_text("two")
    dirs.add(prepare(_config(ds), tiny, log=rec).cache_dir)
    assert len(dirs) == 5 and rec.encoded == 1 + 1 + 1 + 1 + 2


def test_damaged_cache_is_rebuilt(tmp_path: Path, tiny: Components, rec: Recorder) -> None:
    ds = write_demo_dataset(tmp_path / "demo", clips=2, frames=9, width=48, height=40)
    first = prepare(_config(ds), tiny, log=rec)
    (first.cache_dir / "000001.safetensors").unlink()
    again = prepare(_config(ds), tiny, log=rec)
    assert "is not usable" in rec.text() and not again.from_cache
    assert rec.encoded == 4 and len(again.samples) == 2
    assert prepare(_config(ds), tiny, log=rec).from_cache


def test_truncated_cache_file_is_discarded_and_rebuilt(tmp_path: Path, tiny: Components,
                                                       rec: Recorder) -> None:
    # safetensors' SafetensorError is not an OSError/ValueError: it must still count as damage.
    ds = write_demo_dataset(tmp_path / "demo", clips=2, frames=9, width=48, height=40)
    first = prepare(_config(ds), tiny, log=rec)
    os.truncate(first.cache_dir / "000000.safetensors", 50)
    again = prepare(_config(ds), tiny, log=rec)
    assert "is not usable: it is damaged" in rec.text() and not again.from_cache
    assert rec.encoded == 4 and len(again.samples) == 2
    for a, b in zip(first.samples, again.samples, strict=True):
        assert torch.equal(a.latents, b.latents)
    third = prepare(_config(ds), tiny, log=rec)
    assert third.from_cache and rec.encoded == 4


def test_losing_a_publish_race_keeps_the_winner(tmp_path: Path, tiny: Components,
                                                rec: Recorder, cache: Path) -> None:
    ds = write_demo_dataset(tmp_path / "demo", clips=1, frames=9, width=48, height=40)
    first = prepare(_config(ds), tiny, log=rec)
    manifest = (first.cache_dir / "manifest.json").read_text()
    # A second writer that encoded the same data publishes the same key: it must not fail,
    # must not replace the winner's folder, and must leave no temporary folder behind.
    settings = preprocess._manifest_settings(_config(ds), tiny)
    out = preprocess._publish(cache, first.cache_dir.name, first, settings, ds, rec)
    assert out == first.cache_dir
    assert (first.cache_dir / "manifest.json").read_text() == manifest
    assert not list(cache.glob(".tmp-*"))


def test_preprocess_cli_fills_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        cache: Path) -> None:
    ds = write_demo_dataset(tmp_path / "demo", clips=2, frames=9, width=48, height=40)
    assert preprocess_cli(_config(ds)) == 0
    out = capsys.readouterr().out
    assert "2 samples encoded, 0 skipped" in out and str(cache) in out
    assert preprocess_cli(_config(ds)) == 0
    assert "2 samples loaded from the cache" in capsys.readouterr().out
    assert preprocess_cli(_config(tmp_path / "nowhere")) == 1
    assert "error: dataset folder not found" in capsys.readouterr().err


def test_two_processes_preprocessing_the_same_data(tmp_path: Path, cache: Path) -> None:
    # Both may encode; one rename wins; each must end with the complete, same cache folder.
    ds = write_demo_dataset(tmp_path / "demo", clips=2, frames=9, width=48, height=40)
    script = (
        "import sys\n"
        "from ltxq.config import parse_config\n"
        "from ltxq.trainer.models import build_tiny_random\n"
        "from ltxq.trainer.preprocess import prepare\n"
        "cfg = parse_config({'model': {'source': 'tiny-random'},\n"
        f"                   'data': {{'dataset': {str(ds)!r}, 'resolution': {BUCKET!r}}}}})\n"
        "p = prepare(cfg, build_tiny_random(), log=lambda line: None)\n"
        "print(p.cache_dir, len(p.samples))\n")
    env = {**os.environ, "LTXQ_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    lines = {out.strip() for out, _ in outs}
    assert len(lines) == 1
    folder, count = lines.pop().rsplit(" ", 1)
    assert count == "2"
    assert [p.name for p in cache.iterdir()] == [Path(folder).name]  # no half or tmp copies
    assert len(json.loads((Path(folder) / "manifest.json").read_text())["samples"]) == 2
