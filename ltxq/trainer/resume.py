"""Checkpoints of a run: what one holds, when it may continue a run, and reading it back.

`save` writes the complete state of a Trainer (LoRA, optimizer, schedule, every generator, the
data position) with what made it (adapter fingerprint, weight-shaping settings); `load_newest`
restores the newest checkpoint that reads back whole, moving damaged ones aside, and refuses one
trained with other settings (resuming it would continue a run this config did not make).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ltxq.config import TrainingConfig
from ltxq.errors import TrainingError
from ltxq.trainer import checkpoint as ckpt
from ltxq.trainer.distributed import Ranks
from ltxq.trainer.lora import load_lora_state_dict, lora_state_dict

if TYPE_CHECKING:
    from ltxq.trainer.loop import Trainer


def adapter_fingerprint(config: TrainingConfig) -> dict:
    """Return the adapter's identity: a checkpoint with another one cannot continue."""
    lora = config.lora
    return {"rank": lora.rank, "alpha": lora.effective_alpha,
            "target_modules": list(lora.target_modules)}


def weight_settings(config: TrainingConfig) -> dict[str, Any]:
    """Return the settings that shape the weights, as flat `section.key` -> JSON value.

    Model, data, LoRA, optimization (steps and schedule included) and resources.processes;
    not validation, checkpoints, output or job settings. A checkpoint records them, and a
    resume with other values is refused: it would continue a run those values did not make.
    """
    out: dict[str, Any] = {}
    sections = {"model": config.model, "data": config.data, "lora": config.lora,
                "optimization": config.optimization}
    for name, section in sections.items():
        for key, value in dataclasses.asdict(section).items():
            if (name, key) == ("optimization", "gradient_checkpointing"):
                continue  # memory only: the same weights (tested)
            out[f"{name}.{key}"] = value
    out["lora.alpha"] = config.lora.effective_alpha
    # Ranks x per-rank batch is the step's batch: a 2-rank checkpoint of batch 1 resumes
    # in one process of batch 2 (a killed rank's run finished alone), so compare the product.
    del out["optimization.batch_size"]
    out["optimization.batch_size*resources.processes"] = (config.optimization.batch_size
                                                          * config.resources.processes)
    # Through JSON, so tuples and lists (and the values read back) compare equal.
    return json.loads(json.dumps(out, default=str))


def save(trainer: Trainer) -> ckpt.Checkpoint | None:
    """Save the complete state at the current step (a no-op if it already exists).

    Only rank 0 writes (every rank holds the same state); the others get None.
    """
    if not trainer.ranks.is_main:
        return None
    existing = ckpt.latest(trainer.checkpoint_root)
    if existing is not None and existing.step == trainer.step:
        return existing
    state = {
        "step": trainer.step,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "generators": trainer.generators.state_dict(),
        "data_position": trainer.order.position,
        "torch_rng": torch.get_rng_state(),
    }
    if trainer.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)
    config = trainer.config
    meta = {"total_steps": config.optimization.steps, "seed": config.optimization.seed,
            "model": trainer.components.source, "fingerprint": adapter_fingerprint(config),
            "settings": weight_settings(config)}
    saved = ckpt.save(trainer.checkpoint_root, trainer.step,
                      lora_state_dict(trainer.components.transformer), state, meta,
                      trainer.config.checkpoints.keep_last)
    # The Run logs it (one line per checkpoint) and records it where it belongs.
    trainer.run.checkpoint_saved(saved.path, trainer.step)
    return saved


def check_meta(trainer: Trainer, found: ckpt.Checkpoint, meta: dict[str, Any]) -> None:
    """Refuse FOUND (TrainingError, one line) if it was trained with other settings."""
    theirs, ours = meta.get("fingerprint", {}), adapter_fingerprint(trainer.config)
    if theirs != ours:
        diff = ", ".join(f"{k} {theirs.get(k)!r} -> {ours[k]!r}" for k in ours
                         if theirs.get(k) != ours[k])
        raise TrainingError(f"{found.path} belongs to another LoRA ({diff}): use another "
                            f"output folder, or delete {trainer.checkpoint_root}")
    recorded = meta.get("settings")
    if isinstance(recorded, dict):  # older checkpoints have no record: resume as before
        ours_s = weight_settings(trainer.config)
        diff = [f"{k} {recorded[k]!r} -> {ours_s[k]!r}" for k in sorted(ours_s)
                if k in recorded and recorded[k] != ours_s[k]]
        if diff:
            raise TrainingError(
                f"{found.path} was trained with other settings ({', '.join(diff)}): "
                f"resuming would continue a run this config did not make; use a new "
                f"--output-dir (or restore the old settings, or delete "
                f"{trainer.checkpoint_root})")
    if found.step > trainer.config.optimization.steps:
        raise TrainingError(
            f"{found.path} is at step {found.step}, past this config's "
            f"{trainer.config.optimization.steps} steps: use a new --output-dir")
    if meta.get("seed") != trainer.config.optimization.seed:
        trainer.run.log(f"note: the checkpoint was trained with seed {meta.get('seed')}")
    if meta.get("model") != trainer.components.source:
        # A moved model folder is the usual cause; the weights may still be the same.
        trainer.run.log(f"note: the checkpoint was trained on {meta.get('model')}")


def read(trainer: Trainer, found: ckpt.Checkpoint) -> tuple[dict, dict]:
    """Read FOUND whole (meta checked, LoRA and state) before anything is changed.

    A damaged file raises `DamagedCheckpoint`; other settings raise TrainingError.
    """
    try:
        meta = found.meta()
        if not isinstance(meta, dict):
            raise TypeError("meta.json is not an object")
    except Exception as e:  # unreadable in any way is damaged
        raise DamagedCheckpoint(f"{ckpt.META_FILE}: {type(e).__name__}: {e}") from e
    check_meta(trainer, found, meta)
    try:
        lora = found.lora()
    except Exception as e:  # SafetensorError derives from Exception
        raise DamagedCheckpoint(f"{ckpt.LORA_FILE}: {type(e).__name__}: {e}") from e
    expected = lora_state_dict(trainer.components.transformer)
    bad = [k for k in expected if k not in lora or lora[k].shape != expected[k].shape]
    if bad or set(lora) != set(expected):
        raise DamagedCheckpoint(f"{ckpt.LORA_FILE}: does not hold this adapter's weights")
    try:
        state = found.state()
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise KeyError(f"missing {missing}")
        if int(state["step"]) != found.step:
            raise ValueError(f"it says step {int(state['step'])}")
    except Exception as e:  # a truncated zip, a bad pickle opcode, ...
        raise DamagedCheckpoint(f"{ckpt.STATE_FILE}: {type(e).__name__}: {e}") from e
    return lora, state


def restore(trainer: Trainer, found: ckpt.Checkpoint,
            loaded: tuple[dict, dict] | None = None) -> None:
    """Continue from FOUND: LoRA weights, optimizer, schedule, RNG and data position."""
    lora, state = loaded if loaded is not None else read(trainer, found)
    load_lora_state_dict(trainer.components.transformer, lora)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.generators.load_state_dict(state["generators"])
    trainer.order.position = int(state["data_position"])
    torch.set_rng_state(state["torch_rng"])
    if trainer.device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)
    trainer.step = int(state["step"])
    if trainer.step >= trainer.config.optimization.steps:
        trainer.run.log(f"{found.path}: already complete at step {trainer.step}")
    else:
        trainer.run.log(f"resuming from {found.path} (step {trainer.step} of "
                     f"{trainer.config.optimization.steps})")


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be read back (truncated, corrupt, wrong contents)."""


_STATE_KEYS = ("step", "optimizer", "scheduler", "generators", "data_position", "torch_rng")


def load_newest(trainer: Trainer, ranks: Ranks) -> ckpt.Checkpoint | None:
    """Restore TRAINER from the newest checkpoint that reads back whole; None if none does.

    Rank 0 chooses: a damaged one is logged and moved aside (never deleted), and the next
    older is tried. Every rank then loads the one rank 0 chose.
    """
    root, log = trainer.checkpoint_root, trainer.run.log
    chosen: tuple[ckpt.Checkpoint, tuple[dict, dict]] | None = None
    refused: TrainingError | None = None
    if ranks.is_main:
        damaged = False
        for found in reversed(ckpt.list_checkpoints(root)):
            try:
                chosen = found, read(trainer, found)
                break
            except DamagedCheckpoint as e:
                damaged = True
                log(f"checkpoint {found.path.name} is damaged ({e}); trying the previous one")
                _move_aside(found, log)
            except TrainingError as e:  # other settings: tell the other ranks, then raise
                refused = e
                break
        if chosen is None and damaged and refused is None:
            log("no checkpoint could be loaded: starting from scratch")
    step = ranks.from_main(-2 if refused is not None else
                           chosen[0].step if chosen is not None else -1)
    if refused is not None:
        raise refused
    if step == -2:
        raise TrainingError("rank 0 refused the checkpoint (see its log)")
    if step < 0:
        return None
    if chosen is None:  # another rank: read what rank 0 read
        found = ckpt.Checkpoint(root / ckpt.folder_name(step), step)
        chosen = found, read(trainer, found)
    restore(trainer, *chosen)
    return chosen[0]


def _move_aside(found: ckpt.Checkpoint, log: Callable[[str], None]) -> None:
    """Rename a damaged checkpoint out of the step_* names (kept for a look, never pruned)."""
    aside = found.path.with_name(f"damaged-{found.path.name}-{secrets.token_hex(3)}")
    try:
        os.rename(found.path, aside)
    except OSError as e:
        log(f"could not move {found.path} aside ({e})")
    else:
        log(f"moved it aside to {aside}")
