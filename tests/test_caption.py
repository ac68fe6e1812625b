"""Captioning: `ltxq caption` with the tiny-random Qwen2.5-VL (built in code, saved, loaded back
by folder), which clips it captions and where, atomic records, kill -9 and rerun, per-clip locks,
and the torchvision-free video input against the video processor's own layout code.

Tests assert plumbing and files, never caption text (the tiny model writes gibberish).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ltxq.caption.clean import clean_caption
from ltxq.caption.dataset import STATE_DIR, CaptionStore, Clip
from ltxq.caption.frames import pick_indices
from ltxq.trainer.demo_data import write_demo_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LTXQ_CACHE for the module: the tiny captioner is built once."""
    return tmp_path_factory.mktemp("cache")


def ltxq(cwd: Path, cache: Path, *args: str, check: bool = True,
         timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, LTXQ_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "ltxq", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"ltxq {' '.join(args)} -> {p.returncode}\n{p.stdout}{p.stderr}")
    return p


def jsonl_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def mixed_dataset(root: Path) -> Path:
    """A dataset with a caption in every form the reader takes, and clips without one."""
    ds = write_demo_dataset(root / "ds", clips=8, frames=12)
    for i in range(1, 8):
        (ds / f"clip_{i:03d}.txt").unlink()
    # clip_000: sidecar .txt (kept from demo data); clip_001: captions.json; clip_002:
    # captions.csv; clip_003: an existing captions.jsonl row; clip_004: an empty sidecar
    (ds / "captions.json").write_text(json.dumps([{"media_path": "clip_001.mp4",
                                                   "caption": "from json"}]))
    with open(ds / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows([["media_path", "caption"], ["clip_002.mp4", "from csv"]])
    (ds / "captions.jsonl").write_text('{"media_path": "clip_003.mp4", "caption": "old"}')
    (ds / "clip_004.txt").write_text("  \n")
    (ds / "sub").mkdir()
    shutil.move(ds / "clip_007.mp4", ds / "sub" / "clip_007.mp4")
    (ds / "broken.mp4").write_bytes(b"not a video at all")
    (ds / "empty.webm").write_bytes(b"")
    import imageio.v2 as iio

    iio.imwrite(ds / "still.png", np.full((40, 56, 3), 120, dtype=np.uint8))
    return ds


# --- pure parts ------------------------------------------------------------------------------


def test_clean_caption_drops_boilerplate_openings() -> None:
    assert clean_caption("The video shows a cat on a mat.") == "A cat on a mat."
    assert clean_caption("This image depicts  two\nbirds") == "Two birds"
    assert clean_caption("In this video, a dog runs.") == "A dog runs."
    assert clean_caption("A red car drives by.") == "A red car drives by."
    assert clean_caption("   ") == ""


def test_frames_are_sampled_at_about_3_fps_over_the_whole_clip() -> None:
    assert pick_indices(250, 25.0, 3.0, 64) == [round(i * 25 / 3 + 0.4999) for i in range(30)]
    long = pick_indices(25 * 600, 25.0, 3.0, 64)   # ten minutes: thinned, still start to end
    assert len(long) <= 64 and long[0] == 0 and long[-1] > 25 * 590
    steps = np.diff(long)
    assert steps.max() - steps.min() <= 1        # evenly spread
    assert pick_indices(9, 25.0, 3.0, 64) == [0, 3, 5, 8]   # a short clip still gets 4 frames
    assert pick_indices(1, 25.0, 3.0, 64) == [0]


def _video_patchify_from_transformers():
    """Return Qwen2VLVideoProcessor.patchify as transformers wrote it, without torchvision.

    Its module imports torchvision at the top (which cannot load here), so the method's own
    source is taken out of the installed file and run with torch alone.
    """
    import transformers.models.qwen2_vl as pkg

    source = (Path(pkg.__file__).parent / "video_processing_qwen2_vl.py").read_text()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef)
               and n.name == "Qwen2VLVideoProcessor")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "patchify")
    code = textwrap.dedent(ast.get_source_segment(source, fn))
    import torch

    scope: dict = {"torch": torch}
    exec(code, scope)  # transformers' own installed source, nothing else
    return scope["patchify"]


@pytest.mark.parametrize("frames", [4, 5])
def test_video_input_without_torchvision_equals_the_video_processor_layout(frames: int) -> None:
    """Both paths give the model the same input: the per-frame work (smart_resize to the same
    size budget, rescale, CLIP normalisation) is the image processor's in both, and the
    temporal patch layout, run here as transformers' own Qwen2VLVideoProcessor.patchify,
    equals ours element for element, odd frame counts padded alike."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from ltxq.caption.models import video_patches
    from ltxq.caption.tiny import MAX_PIXELS, MIN_PIXELS

    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    ip = Qwen2VLImageProcessorPil()
    rng = np.random.default_rng(frames)
    video = [rng.integers(0, 256, (84, 112, 3), dtype=np.uint8) for _ in range(frames)]
    ours, grid = video_patches(ip, video, size)
    # The processed frames, each alone, as the video processor holds them before patchify.
    per_frame = ip(images=video, size=size, temporal_patch_size=1, return_tensors="np")
    _, gh, gw = (int(x) for x in per_frame["image_grid_thw"][0])
    p, m = ip.patch_size, ip.merge_size
    # Undo the image patchify (tps 1) to get the normalised frames [T, C, H, W] back.
    x = per_frame["pixel_values"].reshape(frames, gh // m, gw // m, m, m, 3, p, p)
    x = x.transpose(0, 5, 1, 3, 6, 2, 4, 7).reshape(frames, 3, gh * p, gw * p)
    patchify = _video_patchify_from_transformers()
    theirs, tg, hg, wg = patchify(None, torch.from_numpy(np.ascontiguousarray(x))[None],
                                  patch_size=p, merge_size=m, temporal_patch_size=2)
    assert [tg, hg, wg] == grid[0].tolist() == [(frames + 1) // 2, gh, gw]
    assert np.array_equal(ours, theirs[0].numpy())
    # And a still video is the image itself: the image processor repeats one frame in time.
    still, _ = video_patches(ip, [video[0], video[0]], size)
    image = ip(images=[video[0]], size=size, return_tensors="np")["pixel_values"]
    assert np.array_equal(still, image)


def test_a_clip_whose_lock_another_process_holds_is_decided_again_once_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clip another process is captioning is waited for, and not captioned again when that
    process wrote its caption meanwhile (the check is made under the clip's lock)."""
    from ltxq.caption import models, runner
    from ltxq.config import CaptionConfig

    ds = write_demo_dataset(tmp_path / "ds", clips=3, frames=9)
    for txt in ds.glob("*.txt"):
        txt.unlink()
    calls: list[int] = []

    class Fake:
        source = "fake"

        def caption(self, clip, prompt, max_new_tokens):
            calls.append(len(clip.frames))
            return "The video shows something."

    monkeypatch.setattr(models, "captioner", lambda *a, **k: Fake())
    other = CaptionStore(ds, "jsonl")
    held = threading.Event()
    release = threading.Event()
    busy = Clip("clip_001.mp4", ds / "clip_001.mp4")

    def other_process() -> None:
        with other.clip_lock(busy) as got:
            assert got
            held.set()
            release.wait(30)
            other.record(busy, "written by the other process")

    t = threading.Thread(target=other_process)
    t.start()
    held.wait(10)
    config = CaptionConfig(dataset=str(ds), model="fake")
    done = threading.Event()
    result: list = []
    worker = threading.Thread(target=lambda: (result.append(runner.caption_dataset(
        config, device="cpu", should_stop=lambda: False, log=lambda m: None,
        progress=lambda t: None)), done.set()))
    worker.start()
    deadline = time.monotonic() + 30
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not done.is_set()          # waiting for clip_001, not finished without it
    release.set()
    t.join(10)
    worker.join(30)
    outcome, tally = result[0]
    assert str(outcome) == "completed"
    assert len(calls) == 2 and sorted(tally.captioned) == ["clip_000.mp4", "clip_002.mp4"]
    rows = jsonl_rows(ds / "captions.jsonl")
    assert sorted(r["media_path"] for r in rows) == ["clip_000.mp4", "clip_001.mp4",
                                                     "clip_002.mp4"]
    assert rows[[r["media_path"] for r in rows].index("clip_000.mp4")]["caption"] == \
        "Something."   # cleaned


# --- `ltxq caption` with the tiny-random model --------------------------------------------


def test_caption_cli_captions_only_what_lacks_a_caption(tmp_path: Path, cache: Path) -> None:
    ds = mixed_dataset(tmp_path)
    before = {name: (ds / name).read_bytes() for name in
              ("captions.json", "captions.csv", "captions.jsonl", "clip_000.txt")}
    p = ltxq(tmp_path, cache, "caption", "ds", "--model", "tiny-random",
             "--max-new-tokens", "6")
    assert "broken.mp4" in p.stdout + p.stderr and "empty.webm" in p.stdout + p.stderr
    rows = jsonl_rows(ds / "captions.jsonl")
    new = [r["media_path"] for r in rows[1:]]
    assert sorted(new) == ["clip_004.mp4", "clip_005.mp4", "clip_006.mp4", "still.png",
                           "sub/clip_007.mp4"]
    assert all(isinstance(r["caption"], str) and r["caption"] for r in rows[1:])
    # Existing captions untouched; the old jsonl line kept byte for byte at the top.
    for name, data in before.items():
        if name == "captions.jsonl":
            assert (ds / name).read_bytes().startswith(data + b"\n")
        else:
            assert (ds / name).read_bytes() == data
    assert "s/clip" in p.stdout
    # The trainer's reader takes the result: every readable clip has a caption now.
    from ltxq.caption.dataset import captioned_keys, list_clips

    clips = list_clips(ds)
    assert captioned_keys(ds, clips) == {c.key for c in clips} - {"broken.mp4", "empty.webm"}
    # A rerun has nothing to do and writes nothing.
    data = (ds / "captions.jsonl").read_bytes()
    ltxq(tmp_path, cache, "caption", "ds", "--model", "tiny-random", "--max-new-tokens", "6")
    assert (ds / "captions.jsonl").read_bytes() == data


def test_caption_txt_format_and_override_keep_old_captions(tmp_path: Path, cache: Path) -> None:
    ds = write_demo_dataset(tmp_path / "ds", clips=3, frames=9)
    (ds / "clip_002.txt").unlink()
    old = (ds / "clip_000.txt").read_text().strip()
    ltxq(tmp_path, cache, "caption", "ds", "--model", "tiny-random", "--format", "txt",
         "--max-new-tokens", "5")
    assert (ds / "clip_002.txt").read_text().strip()
    assert (ds / "clip_000.txt").read_text().strip() == old
    assert not (ds / "captions.jsonl").exists()
    ltxq(tmp_path, cache, "caption", "ds", "--model", "tiny-random", "--format", "txt",
         "--override", "--max-new-tokens", "5")
    backups = jsonl_rows(ds / STATE_DIR / "replaced.jsonl")
    assert {b["media_path"] for b in backups} == {"clip_000.mp4", "clip_001.mp4",
                                                   "clip_002.mp4"}
    assert old in [b["caption"] for b in backups]
    # The override run completed: its resume record is gone, so a new --override starts over.
    assert not list((ds / STATE_DIR).glob("override-*"))


def test_caption_a_saved_local_model_folder(tmp_path: Path, cache: Path) -> None:
    """A model folder on disk (here the tiny one saved with save_pretrained) loads by path."""
    from ltxq.caption.tiny import save_tiny_captioner

    save_tiny_captioner(tmp_path / "model", seed=1)
    ds = write_demo_dataset(tmp_path / "ds", clips=2, frames=9)
    (ds / "clip_001.txt").unlink()
    ltxq(tmp_path, cache, "caption", "ds", "--model", "./model", "--max-new-tokens", "4")
    assert [r["media_path"] for r in jsonl_rows(ds / "captions.jsonl")] == ["clip_001.mp4"]
    bad = ltxq(tmp_path, cache, "caption", "ds", "--model", "./nope", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "caption.model" in bad.stderr


def test_caption_bad_input_is_one_line_exit_2(tmp_path: Path, cache: Path) -> None:
    p = ltxq(tmp_path, cache, "caption", "missing", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "missing" in p.stderr
    p = ltxq(tmp_path, cache, "caption", "x", "--format", "csv", check=False)
    assert p.returncode == 2 and "--format" in p.stderr
    p = ltxq(tmp_path, cache, "caption", "x", "--fps", "0", check=False)
    assert p.returncode == 2 and "--fps" in p.stderr and p.stderr.count("\n") == 1
    p = ltxq(tmp_path, cache, "caption", "--help")
    assert "--override" in p.stdout and "--max-new-tokens" in p.stdout


def test_kill_9_mid_caption_then_rerun_continues(tmp_path: Path, cache: Path) -> None:
    """A kill -9 loses at most the clip in progress; the rerun captions the rest, each clip
    exactly once, and captions.jsonl is whole JSON lines at every moment."""
    ds = write_demo_dataset(tmp_path / "ds", clips=8, frames=24)
    for txt in ds.glob("*.txt"):
        txt.unlink()
    env = dict(os.environ, LTXQ_CACHE=str(cache),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "ltxq", "caption", "ds", "--model", "tiny-random",
            "--max-new-tokens", "40"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    out = ds / "captions.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, "finished before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    first = jsonl_rows(out)   # parses: never a torn line
    assert 1 <= len(first) < 8
    ltxq(tmp_path, cache, "caption", "ds", "--model", "tiny-random", "--max-new-tokens", "40")
    rows = jsonl_rows(out)
    assert rows[:len(first)] == first
    assert sorted(r["media_path"] for r in rows) == [f"clip_{i:03d}.mp4" for i in range(8)]
