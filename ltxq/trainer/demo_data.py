"""A synthetic demo dataset: short mp4 clips of moving coloured shapes, with captions.

Used by `ltxq demo-data`, the README's main job and the tests. Imports only numpy and
imageio (lazily), never torch: the CLI calls it.
"""

from __future__ import annotations

from pathlib import Path

# (name, RGB); saturated colours so a caption's colour word matches what the clip shows.
COLOURS = (("red", (230, 40, 40)), ("blue", (40, 80, 230)), ("green", (40, 200, 70)),
           ("yellow", (235, 220, 40)), ("purple", (160, 60, 200)), ("white", (240, 240, 240)))
SHAPES = ("square", "circle")
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
BACKGROUND = (24, 24, 32)
FPS = 25


def write_demo_dataset(path: Path, clips: int = 4, width: int = 96, height: int = 80,
                       frames: int = 12, seed: int = 0) -> Path:
    """Write CLIPS mp4 files with sidecar .txt captions into PATH and return PATH.

    The size is not a resolution bucket on purpose, so training exercises resize and crop.
    The same arguments give the same pixels and captions.
    """
    import numpy as np

    if clips < 1 or frames < 1 or width < 16 or height < 16:
        raise ValueError("need clips >= 1, frames >= 1 and sides >= 16")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    directions = list(DIRECTIONS)
    for i in range(clips):
        colour_name, rgb = COLOURS[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS) + i) % len(SHAPES)]
        direction = directions[i % len(directions)]
        video = _render_clip(rng, shape, rgb, DIRECTIONS[direction], width, height, frames)
        stem = f"clip_{i:03d}"
        write_mp4(path / f"{stem}.mp4", video, fps=FPS)
        caption = f"a {colour_name} {shape} moving {direction} on a dark background"
        (path / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return path


def _render_clip(rng, shape: str, rgb: tuple[int, int, int], step: tuple[int, int],
                 width: int, height: int, frames: int):
    """Return uint8 frames [F, H, W, 3] of one shape crossing the frame along STEP."""
    import numpy as np

    size = max(6, min(width, height) // 4)
    # Start on the side the shape moves away from, so it crosses most of the frame.
    span_x, span_y = width - size, height - size
    x0 = {1: 0, -1: span_x, 0: int(rng.integers(0, span_x + 1))}[step[0]]
    y0 = {1: 0, -1: span_y, 0: int(rng.integers(0, span_y + 1))}[step[1]]
    speed = max(1.0, max(span_x if step[0] else span_y, 1) / max(frames - 1, 1))
    yy, xx = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        x = round(min(max(x0 + step[0] * speed * f, 0), span_x))
        y = round(min(max(y0 + step[1] * speed * f, 0), span_y))
        frame = video[f]
        frame[:] = BACKGROUND
        if shape == "circle":
            r = size / 2
            mask = (xx - (x + r)) ** 2 + (yy - (y + r)) ** 2 <= r * r
        else:
            mask = (xx >= x) & (xx < x + size) & (yy >= y) & (yy < y + size)
        frame[mask] = rgb
    return video


def write_mp4(path: Path, frames, fps: float = FPS) -> Path:
    """Encode uint8 FRAMES [F, H, W, 3] to an H.264 mp4 at PATH (even sides for yuv420p)."""
    import imageio.v2 as iio

    # macro_block_size=1: keep the exact size instead of imageio's silent resize to 16s.
    with iio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                        pixelformat="yuv420p", macro_block_size=1,
                        ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)
    return Path(path)
