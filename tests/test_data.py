"""The data side without a model: demo clips, decoding, resize and crop, caption sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v2 as iio
import numpy as np
import pytest
import torch

from ltxq.config import Resolution
from ltxq.errors import TrainingError
from ltxq.trainer.captions import load_caption_table, sidecar_caption
from ltxq.trainer.demo_data import write_demo_dataset, write_mp4
from ltxq.trainer.media import MediaError, fit_to_bucket, load_clip, read_frames


def _noise(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), np.uint8)


# --- the demo dataset -----------------------------------------------------------------------


def test_demo_dataset_writes_decodable_mp4s_with_captions(tmp_path: Path) -> None:
    out = write_demo_dataset(tmp_path / "demo", clips=3, width=96, height=80, frames=12)
    assert out == tmp_path / "demo"
    videos = sorted(out.glob("*.mp4"))
    assert [v.stem for v in videos] == ["clip_000", "clip_001", "clip_002"]
    for video in videos:
        reader = iio.get_reader(video, format="FFMPEG")
        frames = [f for f in reader]
        reader.close()
        assert len(frames) == 12
        assert frames[0].shape == (80, 96, 3)
        assert not np.array_equal(frames[0], frames[-1])  # the shape moves
    captions = [sidecar_caption(v) for v in videos]
    assert captions[0] == "a red square moving right on a dark background"
    assert captions[1].startswith("a blue circle moving left")
    assert len(set(captions)) == 3


def test_demo_dataset_red_square_is_red_and_moves_right(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, clips=1, width=64, height=48, frames=9)
    frames = read_frames(tmp_path / "clip_000.mp4", 9).astype(int)

    def red_centre_x(frame: np.ndarray) -> float:
        red = (frame[:, :, 0] > 150) & (frame[:, :, 1] < 100) & (frame[:, :, 2] < 100)
        assert red.sum() > 20
        return float(np.nonzero(red)[1].mean())

    assert red_centre_x(frames[-1]) > red_centre_x(frames[0]) + 20


def test_demo_dataset_is_deterministic(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "a", clips=2, frames=9)
    write_demo_dataset(tmp_path / "b", clips=2, frames=9)
    for name in ("clip_000.mp4", "clip_001.mp4"):
        assert np.array_equal(read_frames(tmp_path / "a" / name, 9),
                              read_frames(tmp_path / "b" / name, 9))


def test_demo_data_module_does_not_import_torch() -> None:
    code = ("import sys, ltxq.trainer.demo_data as d; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- decoding, resize and crop --------------------------------------------------------------


@pytest.mark.parametrize(("src_w", "src_h", "bucket"), [
    (96, 80, "64x64x9"),    # wider than the bucket: crop the sides
    (50, 90, "64x32x9"),    # tall source into a wide bucket: upscale, crop top and bottom
    (70, 46, "32x64x1"),    # wide source into a tall bucket
    (64, 64, "64x64x9"),    # exact: untouched
])
def test_fit_to_bucket_shapes_and_range(src_w: int, src_h: int, bucket: str) -> None:
    b = Resolution.parse(bucket)
    out = fit_to_bucket(_noise(b.frames, src_h, src_w), b.width, b.height)
    assert out.shape == (3, b.frames, b.height, b.width)
    assert out.dtype == torch.float32
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


def test_fit_to_bucket_keeps_aspect_and_crops_the_centre() -> None:
    # 120x40 into 32x32: scaled to 96x32 (aspect kept), centre columns 32..64 kept, which
    # come from source columns 40..80: the white band.
    frame = np.zeros((1, 40, 120, 3), np.uint8)
    frame[:, :, 40:80] = 255
    out = fit_to_bucket(frame, 32, 32)
    assert out.shape == (3, 1, 32, 32)
    assert float(out[:, :, :, 2:30].min()) > 0.9   # white, away from the blurred edges
    exact = fit_to_bucket(_noise(1, 32, 32), 32, 32)
    assert torch.equal(exact, torch.from_numpy(_noise(1, 32, 32)).permute(3, 0, 1, 2) / 127.5 - 1)


def test_load_clip_trims_long_videos_to_the_bucket(tmp_path: Path) -> None:
    video = _noise(20, 50, 70)
    write_mp4(tmp_path / "long.mp4", video)
    clip = load_clip(tmp_path / "long.mp4", Resolution.parse("32x32x9"))
    assert clip.shape == (3, 9, 32, 32)
    assert read_frames(tmp_path / "long.mp4", 100).shape == (20, 50, 70, 3)
    assert read_frames(tmp_path / "long.mp4", 5).shape == (5, 50, 70, 3)


def test_load_clip_refuses_short_videos(tmp_path: Path) -> None:
    write_mp4(tmp_path / "short.mp4", _noise(5, 48, 64))
    with pytest.raises(MediaError, match=r"too short: 5 frames.*needs 9"):
        load_clip(tmp_path / "short.mp4", Resolution.parse("32x32x9"))


@pytest.mark.parametrize(("content", "words"), [(b"", "empty file"),
                                                (b"definitely not a video" * 50, "unreadable")])
def test_load_clip_reports_unreadable_files(tmp_path: Path, content: bytes, words: str) -> None:
    (tmp_path / "broken.mp4").write_bytes(content)
    with pytest.raises(MediaError, match=words):
        load_clip(tmp_path / "broken.mp4", Resolution.parse("32x32x9"))


def test_images_fit_one_frame_buckets_only(tmp_path: Path) -> None:
    iio.imwrite(tmp_path / "rgba.png", _noise(1, 45, 71)[0][:, :, [0, 1, 2, 0]])
    iio.imwrite(tmp_path / "grey.jpg", _noise(1, 45, 71)[0][:, :, 0])
    iio.imwrite(tmp_path / "pic.webp", _noise(1, 45, 71)[0])
    for name in ("rgba.png", "grey.jpg", "pic.webp"):
        assert load_clip(tmp_path / name, Resolution.parse("64x32x1")).shape == (3, 1, 32, 64)
        with pytest.raises(MediaError, match="an image, but the bucket 64x32x9 needs 9"):
            load_clip(tmp_path / name, Resolution.parse("64x32x9"))


def test_animated_gif_of_odd_size_is_a_video(tmp_path: Path) -> None:
    iio.mimsave(tmp_path / "anim.gif", list(_noise(11, 45, 71)))
    assert load_clip(tmp_path / "anim.gif", Resolution.parse("32x32x9")).shape == (3, 9, 32, 32)


@pytest.mark.parametrize(("ext", "codec"), [(".webm", "libvpx"), (".mov", "libx264"),
                                             (".mkv", "libx264"), (".avi", "mpeg4")])
def test_other_video_containers_decode(tmp_path: Path, ext: str, codec: str) -> None:
    path = tmp_path / f"v{ext}"
    with iio.get_writer(str(path), format="FFMPEG", fps=25, codec=codec, macro_block_size=1,
                        ffmpeg_log_level="error") as writer:
        for frame in _noise(10, 48, 66):
            writer.append_data(frame)
    assert load_clip(path, Resolution.parse("32x32x9")).shape == (3, 9, 32, 32)


# --- captions -------------------------------------------------------------------------------


def test_caption_table_json_list_and_mapping(tmp_path: Path) -> None:
    (tmp_path / "captions.json").write_text(json.dumps(
        [{"media_path": "a.mp4", "caption": " a cat "}, {"media_path": "./sub/b.mp4",
                                                        "caption": "a dog"}]))
    table, used = load_caption_table(tmp_path)
    assert table == {"a.mp4": "a cat", "sub/b.mp4": "a dog"}
    assert used == [tmp_path / "captions.json"]
    (tmp_path / "captions.json").write_text(json.dumps({"a.mp4": "a cat"}))
    assert load_caption_table(tmp_path)[0] == {"a.mp4": "a cat"}


def test_caption_table_jsonl_and_csv(tmp_path: Path) -> None:
    (tmp_path / "captions.jsonl").write_text(
        '{"media_path": "a.mp4", "caption": "one"}\n\n{"media_path": "b.gif", "caption": "two"}\n')
    assert load_caption_table(tmp_path)[0] == {"a.mp4": "one", "b.gif": "two"}
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text(
        'media_path,caption\na.mp4,"one, with a comma"\nb.gif,two\n')
    assert load_caption_table(tmp_path)[0] == {"a.mp4": "one, with a comma", "b.gif": "two"}


@pytest.mark.parametrize(("name", "text", "message"), [
    ("captions.json", "[{", r"captions.json: invalid JSON"),
    ("captions.json", '[{"media_path": "a.mp4"}]', r"captions.json: item 0: 'caption' is missing"),
    ("captions.jsonl", '{"media_path": "a.mp4", "caption": "x"}\n{oops}',
     r"captions.jsonl: line 2: invalid JSON"),
    ("captions.csv", "path,text\na.mp4,x\n", r"captions.csv: line 1: missing column 'media_path'"),
    ("captions.json", '[{"media_path": "../a.mp4", "caption": "x"}]', r"inside the dataset"),
])
def test_malformed_caption_tables_name_file_and_place(tmp_path: Path, name: str, text: str,
                                                      message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(TrainingError, match=message):
        load_caption_table(tmp_path)


def test_sidecar_caption(tmp_path: Path) -> None:
    (tmp_path / "clip.txt").write_text("  a red square\n")
    assert sidecar_caption(tmp_path / "clip.mp4") == "a red square"
    assert sidecar_caption(tmp_path / "other.mp4") is None
