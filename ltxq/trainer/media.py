"""Decode videos and images and fit them to a resolution bucket.

Decoding uses imageio: ffmpeg (the imageio-ffmpeg binary; there is no system ffmpeg) for
videos, Pillow for images and GIFs. Only the frames a bucket needs are decoded, so a long
video costs no more than a short one. Every problem with one file is a `MediaError` whose
text says why, so the caller can skip the file by name and go on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ltxq.config import Resolution

VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpg",
                              ".mpeg", ".wmv", ".flv", ".ogv", ".3gp", ".ts"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
# GIFs may be animated: decoded with Pillow, then treated as videos (or images if 1 frame).
ANIMATED_EXTENSIONS = frozenset({".gif"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS | ANIMATED_EXTENSIONS


class MediaError(Exception):
    """One media file cannot be used; the text is the reason shown next to its name."""


def is_media(path: Path) -> bool:
    """Tell whether PATH has a video or image extension we decode."""
    return path.suffix.lower() in MEDIA_EXTENSIONS


def check_not_empty(path: Path) -> None:
    """MediaError if PATH is empty or cannot be stat'ed (decoders say worse things of those)."""
    try:
        if path.stat().st_size == 0:
            raise MediaError("empty file (0 bytes)")
    except OSError as e:
        raise MediaError(f"unreadable ({e.strerror or e})") from None


def open_reader(path: Path) -> Any:
    """Open an imageio reader of a video (ffmpeg) or animated image (imageio's choice, Pillow
    for GIFs); the caller closes it."""
    import imageio.v2 as iio

    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return iio.get_reader(path, format="FFMPEG")
    return iio.get_reader(path)


def read_frames(path: Path, max_frames: int) -> np.ndarray:
    """Decode at most MAX_FRAMES frames of PATH as uint8 RGB [F, H, W, 3]."""
    import imageio.v2 as iio

    frames: list[np.ndarray] = []
    check_not_empty(path)
    try:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            frames.append(iio.imread(path))
        else:
            reader = open_reader(path)
            try:
                for frame in reader:
                    frames.append(np.asarray(frame))
                    if len(frames) >= max_frames:
                        break
            finally:
                reader.close()
    except Exception as e:  # noqa: BLE001 - decoders raise anything on bad bytes
        raise MediaError(f"unreadable ({_first_line(e)})") from None
    if not frames:
        raise MediaError("unreadable (no frames)")
    return np.stack([_to_rgb(f) for f in frames])


def frame_rate_of(path: Path) -> float | None:
    """Return the frame rate PATH's container states (videos, animated GIFs), else None."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return None
    try:
        reader = open_reader(path)
        try:
            meta = reader.get_meta_data()
        finally:
            reader.close()
    except Exception:  # noqa: BLE001 - unreadable is read_frames' error to report
        return None
    fps = meta.get("fps")
    if fps is None and meta.get("duration"):  # GIFs (Pillow) give milliseconds per frame
        fps = 1000.0 / float(meta["duration"])
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        return None
    return fps if 0.0 < fps < 1000.0 else None


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """Return FRAME as uint8 [H, W, 3]: grey is repeated, alpha dropped, 16-bit scaled."""
    if frame.dtype == np.uint16:
        frame = (frame // 257).astype(np.uint8)
    elif frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.shape[2] == 2:  # grey + alpha
        frame = np.repeat(frame[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(frame[:, :, :3])


def fit_to_bucket(frames: np.ndarray, width: int, height: int) -> torch.Tensor:
    """Resize uint8 [F, H, W, 3] to cover WIDTHxHEIGHT keeping the aspect ratio, then
    centre-crop; return float32 [3, F, HEIGHT, WIDTH] in [-1, 1] (the VAE's input range)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    src_h, src_w = video.shape[-2:]
    scale = max(width / src_w, height / src_h)
    # round() can land one pixel short of the bucket; max() keeps the cover property.
    new_w = max(width, round(src_w * scale))
    new_h = max(height, round(src_h * scale))
    if (new_h, new_w) != (src_h, src_w):
        # antialias: a plain bilinear downscale aliases fine detail into flicker.
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear",
                              align_corners=False, antialias=True)
    top = (new_h - height) // 2
    left = (new_w - width) // 2
    video = video[:, :, top:top + height, left:left + width]
    video = (video / 127.5 - 1.0).clamp(-1.0, 1.0)
    return video.permute(1, 0, 2, 3).contiguous()


def load_clip(path: Path, bucket: Resolution) -> torch.Tensor:
    """Decode PATH and fit it to BUCKET: float32 [3, frames, height, width] in [-1, 1].

    Videos are cut to their first `bucket.frames` frames; a shorter video is refused.
    Images are 1-frame clips, so they only fit buckets with frames == 1.
    """
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS and bucket.frames > 1:
        raise MediaError(f"an image, but the bucket {bucket} needs {bucket.frames} frames "
                         "(use a ...x1 resolution for image datasets)")
    frames = read_frames(path, bucket.frames)
    if len(frames) < bucket.frames:
        if len(frames) == 1 and suffix in ANIMATED_EXTENSIONS:
            raise MediaError(f"a still image, but the bucket {bucket} needs "
                             f"{bucket.frames} frames")
        raise MediaError(f"too short: {len(frames)} frames, the bucket {bucket} needs "
                         f"{bucket.frames}")
    return fit_to_bucket(frames[:bucket.frames], bucket.width, bucket.height)


def choose_bucket(buckets: list[Resolution], width: int, height: int,
                  frames: int) -> Resolution | None:
    """Return the bucket for a WIDTHxHEIGHT clip of FRAMES frames (1: a still image).

    A still goes to a one-frame bucket and a video to a longer one it fills; among those, the
    nearest aspect ratio wins (so portrait and landscape clips keep their framing), then the
    most frames, then the largest area. None when no bucket fits.
    """
    fits = [b for b in buckets
            if (b.frames == 1 if frames == 1 else 1 < b.frames <= frames)]
    if not fits:
        return None
    aspect = math.log(width / height)
    return min(fits, key=lambda b: (round(abs(aspect - math.log(b.width / b.height)), 6),
                                    -b.frames, -b.width * b.height))


def load_clip_in_buckets(path: Path, buckets: list[Resolution]) -> tuple[torch.Tensor,
                                                                         Resolution]:
    """Decode PATH, choose its bucket (`choose_bucket`) and fit it: ([3, F, H, W], bucket)."""
    if len(buckets) == 1:
        return load_clip(path, buckets[0]), buckets[0]
    still = path.suffix.lower() in IMAGE_EXTENSIONS
    frames = read_frames(path, 1 if still else max(b.frames for b in buckets))
    height, width = frames.shape[1:3]
    bucket = choose_bucket(buckets, width, height, len(frames))
    if bucket is None:
        names = ", ".join(str(b) for b in buckets)
        what = "a still image" if len(frames) == 1 else f"{len(frames)} frames"
        raise MediaError(f"fits none of the buckets {names} ({what})")
    return fit_to_bucket(frames[:bucket.frames], bucket.width, bucket.height), bucket


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."
