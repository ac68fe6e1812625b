"""Job kinds on the executors' side: which run function a job gets, behind one seam.

Every kind runs as `run_function(job.work, run) -> TrainResult` with the same `Run` (log,
progress, should_stop), so the local executor and the Slurm node treat them alike: cancel,
shutdown, recovery, `after` and on_finish need nothing per kind. A train job gets the
executor's trainer (`LTXQ_TRAINER`, or the real one); the others get theirs from RUNNERS.

Warm models: the daemon keeps the last captioner (ltxq.caption.models) and the last LTX model
(ltxq.trainer.warm) between jobs, but never both: `release_others(kind)` drops the one the
next job's kind does not use before it starts. Nothing heavy is imported here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from ltxq.errors import LtxqError, TrainingError

RUNNERS = {"caption": "ltxq.caption.runner:run_caption",
           "preprocess": "ltxq.executors.kinds:run_preprocess"}

RunFunction = Callable[[Any, Any], Any]


def run_function(kind: str, train: Callable[[], RunFunction]) -> RunFunction:
    """Return the run function of a job of KIND; TRAIN gives the trainer (loaded on demand)."""
    if kind == "train":
        return train()
    module, _, name = RUNNERS[kind].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LtxqError(f"cannot load the {kind} runner {RUNNERS[kind]}: {e}") from e


def release_others(kind: str, log: Callable[[str], None]) -> None:
    """Drop the warm model a job of KIND does not use (captioner or LTX model)."""
    captioners = sys.modules.get("ltxq.caption.models")
    if kind != "caption" and captioners is not None and captioners.release():
        log("released the warm captioner (this job needs the memory)")
    trainer_warm = sys.modules.get("ltxq.trainer.warm")
    if kind == "caption" and trainer_warm is not None:
        had = bool(getattr(trainer_warm, "_cache", None))
        trainer_warm.clear()
        if had:
            import gc

            gc.collect()
            log("released the warm LTX model (this job needs the memory)")


def check_after_captions(spool: Any, job: Any) -> None:
    """Refuse to start a train job whose `after` has a caption job on its dataset while that
    dataset still has no captioned media (a dataset that is valid at submit because its
    captions were still to come must be valid now)."""
    if job.kind != "train" or not job.meta.after:
        return
    dataset = job.config.data.dataset
    waited = False
    for parent in job.meta.after:
        try:
            parent_job = spool.get(parent).job
        except LtxqError:
            continue
        waited = waited or (parent_job.kind == "caption"
                            and parent_job.work.dataset == dataset)
    if not waited:
        return
    from pathlib import Path

    from ltxq.caption.dataset import captioned_keys, list_clips

    folder = Path(dataset)
    if not folder.is_dir():
        raise TrainingError(f"dataset folder not found: {folder}")
    clips = list_clips(folder)
    if not captioned_keys(folder, clips):
        raise TrainingError(f"dataset {folder}: none of its {len(clips)} media files has a "
                            "caption (the caption job it waited for wrote none)")


class _Stopped(LtxqError):
    """should_stop() said so while preprocessing (an LtxqError: the warm model stays)."""


def run_preprocess(task: Any, run: Any) -> Any:
    """The preprocess job's run function: fill the cache of TASK's dataset and settings;
    step = media files done, total = media files; stops between files."""
    from ltxq.run import Outcome, TrainResult
    from ltxq.trainer import warm
    from ltxq.trainer.device import resolve_device, resolve_precision, weight_dtype
    from ltxq.trainer.loop import load_options
    from ltxq.trainer.preprocess import prepare

    config = task.training   # the training view: the cache a training job with it will use
    device = resolve_device(run.device)
    # The same dtype and load options as training on this device, so the warm model is shared.
    dtype = weight_dtype(resolve_precision(config.optimization.mixed_precision, device))
    seen = {"done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        seen.update(done=done, total=total)
        run.progress(done, total, float("nan"), 0.0, 0.0)
        if done < total and run.should_stop():
            raise _Stopped("stopped")

    try:
        with warm.components(config.model.source, revision=config.model.revision,
                             dtype=dtype, device=device, log=run.log,
                             **load_options(config)) as components:
            prepared = prepare(config, components, log=run.log, progress=progress)
    except _Stopped:
        run.log(f"preprocessing stopped at {seen['done']}/{seen['total']}; the cache is only "
                "published once complete")
        return TrainResult(Outcome.STOPPED, seen["done"], seen["total"])
    run.log(f"preprocessed {len(prepared.samples)} samples, {len(prepared.skipped)} skipped: "
            f"{prepared.cache_dir}")
    return TrainResult(Outcome.COMPLETED, seen["total"], seen["total"])
