"""The captioning loop, and `run_caption(config, run)`: the caption job's run function.

One pass over the dataset's clips in name order. A clip is captioned under its own lock, and
only if it still needs a caption once the lock is held (another process may have written one
meanwhile); its caption is recorded at once, atomically. Clips whose lock another process
holds are left for a second pass that waits for them, so a run ends only when every clip is
captioned, skipped or stopped. `should_stop()` is checked between clips: a cancel or a
shutdown loses nothing but the clip in progress, and a rerun continues with the next clip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltxq.caption.clean import clean_caption
from ltxq.caption.dataset import CaptionStore, Clip, captioned_keys, current_caption, list_clips
from ltxq.config import CaptionConfig
from ltxq.errors import TrainingError
from ltxq.run import Outcome, TrainResult

BUSY_WAIT_S = 1.0   # how long one wait for another process's clip lasts before should_stop()


@dataclass
class Tally:
    """What a run did, clip by clip."""

    total: int = 0
    done: int = 0              # captioned before, by this run, or by another process meanwhile
    captioned: list[str] = field(default_factory=list)   # by this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (clip, reason)
    seconds: float = 0.0       # spent captioning (model time), for s/clip


Progress = Callable[[Tally], None]
Log = Callable[[str], None]


def caption_dataset(config: CaptionConfig, *, device: str | None, should_stop: Callable[[], bool],
                    log: Log, progress: Progress, run_id: str | None = None
                    ) -> tuple[Outcome, Tally]:
    """Caption what CONFIG's dataset lacks; return how it ended and the tally.

    RUN_ID names an --override run so a rerun continues it (the job key, or a hash of the
    settings for `ltxq caption`). Raises TrainingError for a dataset that cannot be read.
    """
    dataset = Path(config.dataset).expanduser()
    if not dataset.is_dir():
        raise TrainingError(f"dataset folder not found: {dataset}")
    clips = list_clips(dataset)
    store = CaptionStore(dataset, config.format, run_id if config.override else None)
    tally = Tally(total=len(clips))
    store.clean_tmp()
    finished = store.overridden() if config.override else captioned_keys(dataset, clips)
    todo = [c for c in clips if c.key not in finished]
    tally.done = len(clips) - len(todo)
    log(f"captioning {len(todo)} of {len(clips)} clips in {dataset} with {config.model} "
        f"({tally.done} already captioned; format {config.format})")
    progress(tally)
    if not todo:
        store.finish()
        return Outcome.COMPLETED, tally
    from ltxq.caption.models import captioner

    model = captioner(config.model, revision=config.revision, device=device, log=log)
    busy: list[Clip] = []
    for clip in todo:
        if should_stop():
            return Outcome.STOPPED, tally
        if not _one(clip, config, store, model, tally, log, wait=0.0):
            busy.append(clip)
            continue
        progress(tally)
    for clip in busy:   # another process holds these: wait for it, then look again
        while True:
            if should_stop():
                return Outcome.STOPPED, tally
            if _one(clip, config, store, model, tally, log, wait=BUSY_WAIT_S):
                break
        progress(tally)
    store.finish()
    return Outcome.COMPLETED, tally


def _one(clip: Clip, config: CaptionConfig, store: CaptionStore, model: Any, tally: Tally,
         log: Log, *, wait: float) -> bool:
    """Caption CLIP unless another process holds it (return False) or already captioned it."""
    from ltxq.caption.frames import sample_clip
    from ltxq.trainer.media import MediaError

    with store.clip_lock(clip, wait=wait) as held:
        if not held:
            return False
        tally.done += 1
        if config.override:
            if clip.key in store.overridden():
                return True
        elif current_caption(store.dataset, clip):
            return True   # another process captioned it while we were busy
        start = time.monotonic()
        try:
            sampled = sample_clip(clip.path, config.fps, config.max_frames)
        except MediaError as e:
            tally.skipped.append((clip.key, str(e)))
            log(f"skipped {clip.key}: {e}")
            return True
        text = clean_caption(model.caption(sampled, config.prompt, config.max_new_tokens))
        tally.seconds += time.monotonic() - start
        if not text:
            tally.skipped.append((clip.key, "the model gave an empty caption"))
            log(f"skipped {clip.key}: the model gave an empty caption")
            return True
        dest = store.record(clip, text)
        tally.captioned.append(clip.key)
        _warn_if_shadowed(store, clip, text, dest, log)
    return True


def _warn_if_shadowed(store: CaptionStore, clip: Clip, text: str, dest: Path, log: Log) -> None:
    """Say when a caption table wins over what was just written (the trainer would not use it)."""
    if current_caption(store.dataset, clip) != text:
        log(f"note: {clip.key}: wrote {dest.name}, but another caption file of the dataset "
            "wins over it (tables win over clip.txt; captions.csv over captions.jsonl)")


def seconds_per_clip(tally: Tally) -> float:
    """Return the mean model time per clip captioned so far (0 before the first)."""
    return tally.seconds / len(tally.captioned) if tally.captioned else 0.0


def run_caption(config: CaptionConfig, run: Any) -> TrainResult:
    """The caption job's run function (the seam `run(config, run) -> result`): step = clips
    done, total = clips; cancel and shutdown stop between clips."""
    def progress(tally: Tally) -> None:
        run.progress(tally.done, tally.total, float("nan"), 0.0, seconds_per_clip(tally))

    outcome, tally = caption_dataset(
        config, device=run.device, should_stop=run.should_stop, log=run.log,
        progress=progress, run_id=getattr(run, "job_key", None) or "job")
    if outcome is Outcome.COMPLETED:
        run.log(f"captioned {len(tally.captioned)} clips, skipped {len(tally.skipped)}, "
                f"{tally.done}/{tally.total} done; {seconds_per_clip(tally):.2f} s/clip")
    return TrainResult(outcome=outcome, step=tally.done, total_steps=tally.total)
