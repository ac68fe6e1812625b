"""Decode a clip for the captioner with the trainer's decoder, sampled at about FPS.

Videos go through the same imageio readers as `ltxq.trainer.media` (ffmpeg for videos, Pillow
for GIFs) and frames are converted with its `_to_rgb`, so the captioner sees what training
sees. Upstream (LTX-Video-Trainer) samples videos at 3 fps. Frames are picked while decoding
(never the whole video in memory): one frame each 1/FPS seconds of the clip's own rate; past
MAX_FRAMES every other kept frame is dropped and the step doubled, so a long video is still
covered from start to end with at most MAX_FRAMES frames. Images (and one-frame GIFs) are
captioned as images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltxq.trainer.media import (
    IMAGE_EXTENSIONS,
    MediaError,
    _first_line,
    _to_rgb,
    check_not_empty,
    open_reader,
    read_frames,
)

DEFAULT_GIF_FPS = 10.0
MIN_FRAMES = 4  # as upstream's qwen-vl-utils: a short clip still gives the model 4 frames


@dataclass(frozen=True)
class Sampled:
    """A decoded clip: uint8 RGB frames [T, H, W, 3]; an image when is_image."""

    frames: np.ndarray
    fps: float           # rate of the sampled frames (for the model's time positions)
    is_image: bool


def sample_clip(path: Path, fps: float = 3.0, max_frames: int = 64) -> Sampled:
    """Decode PATH: an image as one frame, a video sampled at about FPS (MediaError if not)."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return Sampled(read_frames(path, 1), fps, True)
    frames, rate = _sample_video(path, fps, max_frames)
    if len(frames) == 1:
        return Sampled(frames, fps, True)   # a one-frame GIF or video is a still image
    return Sampled(frames, rate, False)


class _Picker:
    """Which decoded frames to keep: one per 1/FPS s; past MAX_FRAMES, every other one."""

    def __init__(self, source_fps: float, fps: float, max_frames: int):
        self.step = max(source_fps / fps, 1.0)
        self.next_at = 0.0
        self.max_frames = max_frames
        self.kept: list[int] = []

    def wants(self, index: int) -> bool:
        return index + 1e-9 >= self.next_at

    def keep(self, index: int) -> bool:
        """Keep frame INDEX; return True if the kept frames were thinned to every other."""
        self.kept.append(index)
        self.next_at += self.step
        if len(self.kept) <= self.max_frames:
            return False
        self.kept, self.step = self.kept[::2], self.step * 2
        self.next_at = self.kept[-1] + self.step
        return True


def pick_indices(total: int, source_fps: float, fps: float, max_frames: int) -> list[int]:
    """Return the indices of the frames a TOTAL-frame clip at SOURCE_FPS gives the model."""
    picker = _Picker(source_fps, fps, max_frames)
    for i in range(total):
        if picker.wants(i):
            picker.keep(i)
    if len(picker.kept) < MIN_FRAMES and total > len(picker.kept):
        return _spread(total, min(MIN_FRAMES, total))
    return picker.kept


def _spread(total: int, count: int) -> list[int]:
    """Return COUNT indices spread evenly over TOTAL frames, first and last included."""
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def _sample_video(path: Path, fps: float, max_frames: int) -> tuple[np.ndarray, float]:
    check_not_empty(path)
    kept: list[np.ndarray] = []
    first: list[np.ndarray] = []   # every frame of a short clip (fewer than MIN_FRAMES kept)
    try:
        reader = open_reader(path)
        try:
            source_fps = _source_fps(reader.get_meta_data())
            picker = _Picker(source_fps, fps, max_frames)
            for i, frame in enumerate(reader):
                if i <= MIN_FRAMES * picker.step:  # only a short clip needs them
                    first.append(frame)
                if picker.wants(i):
                    kept.append(_to_rgb(np.asarray(frame)))
                    if picker.keep(i):
                        kept = kept[::2]
        finally:
            reader.close()
    except Exception as e:  # noqa: BLE001 - decoders raise anything on bad bytes
        raise MediaError(f"unreadable ({_first_line(e)})") from None
    if not kept:
        raise MediaError("unreadable (no frames)")
    if len(kept) < MIN_FRAMES and len(first) > len(kept):
        picks = _spread(len(first), min(MIN_FRAMES, len(first)))
        rate = source_fps * (len(picks) - 1) / max(picks[-1], 1)
        return np.stack([_to_rgb(np.asarray(first[i])) for i in picks]), rate
    return np.stack(kept), source_fps / picker.step


def _source_fps(meta: dict) -> float:
    rate = meta.get("fps")
    if isinstance(rate, (int, float)) and rate > 0:
        return float(rate)
    duration = meta.get("duration")  # Pillow: milliseconds per GIF frame
    if isinstance(duration, (int, float)) and duration > 0:
        return 1000.0 / duration
    return DEFAULT_GIF_FPS
