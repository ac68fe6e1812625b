"""`ltxq caption` (foreground, tqdm bar) and what `submit --caption/--preprocess` queues.

Nothing heavy at import: torch and transformers load when a caption actually runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ltxq.configs import DEFAULT_CAPTION_MODEL, DEFAULT_CAPTION_PROMPT
from ltxq.errors import ConfigError, LtxqError


@click.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=DEFAULT_CAPTION_MODEL, show_default=True,
              help="Vision-language model: hub id, local folder, or tiny-random.")
@click.option("--prompt", default=DEFAULT_CAPTION_PROMPT, show_default=True,
              help="Instruction given with every clip.")
@click.option("--override", is_flag=True,
              help="Caption clips that have a caption too (old captions are kept: earlier "
                   "lines of captions.jsonl, or .ltxq-caption/replaced.jsonl for clip.txt).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "txt"]), default="jsonl",
              show_default=True, help="captions.jsonl in DATASET, or clip.txt sidecars.")
@click.option("--device", help="cpu, cuda, or cuda:N (default: the best available).")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=200, show_default=True,
              help="Most tokens generated per caption.")
@click.option("--fps", type=click.FloatRange(0.1, 60.0), default=3.0, show_default=True,
              help="Frames per second sampled from a video (as upstream: 3).")
@click.option("--max-frames", type=click.IntRange(2, 768), default=64, show_default=True,
              help="Most frames per video (a longer one is sampled more sparsely).")
def caption(dataset: Path, model: str, prompt: str, override: bool, fmt: str,
            device: str | None, max_new_tokens: int, fps: float, max_frames: int) -> None:
    """Caption the clips of DATASET that have no caption, in the foreground.

    Each caption is recorded as soon as it is made; Ctrl-C (or a kill) loses at most the clip
    in progress, and the same command continues where it stopped.
    """
    from ltxq.config import parse_kind_sections
    from ltxq.daemon import pin_device

    if model.startswith((".", "/", "~")):
        model = str(Path(model).expanduser().absolute())
    config, _ = parse_kind_sections("caption", {"caption": {
        "dataset": str(dataset), "model": model, "prompt": prompt, "override": override,
        "format": fmt, "max_new_tokens": max_new_tokens, "fps": fps,
        "max_frames": max_frames}}, base_dir=Path.cwd(),
        require_dataset_exists=True)
    trainer_device = pin_device(device)
    sys.exit(_run_foreground(config, trainer_device))


def _run_foreground(config: Any, device: str | None) -> int:
    import signal

    from tqdm import tqdm

    from ltxq.caption.runner import caption_dataset, seconds_per_clip
    from ltxq.run import Outcome

    stop = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:
        stop["signal"] = signum   # only record; the loop stops between clips

    previous = signal.signal(signal.SIGINT, on_signal)
    bar = tqdm(total=0, unit="clip", desc="caption", dynamic_ncols=True)

    def progress(tally: Any) -> None:
        bar.total = tally.total
        bar.update(tally.done - bar.n)
        spc = seconds_per_clip(tally)
        if spc:
            bar.set_postfix_str(f"{spc:.2f} s/clip", refresh=True)

    try:
        outcome, tally = caption_dataset(
            config, device=device, should_stop=lambda: stop["signal"] is not None,
            log=tqdm.write, progress=progress, run_id=_run_id(config))
    except LtxqError as e:
        bar.close()
        click.echo(f"ltxq: {e}", err=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    skipped = f", {len(tally.skipped)} skipped" if tally.skipped else ""
    if outcome is not Outcome.COMPLETED:
        click.echo(f"stopped after {tally.done}/{tally.total} clips; run the same command "
                   "again to continue", err=True)
        return 130
    click.echo(f"{len(tally.captioned)} captioned{skipped}, {tally.done}/{tally.total} clips "
               f"have captions or were skipped; {seconds_per_clip(tally):.2f} s/clip")
    return 0


def _run_id(config: Any) -> str:
    """Name an --override run by its settings, so the same command continues it."""
    import hashlib  # (every command loads this module for its options: keep it light)

    text = json.dumps([config.model, config.prompt, config.format, config.max_new_tokens,
                       config.fps, config.max_frames])
    return "cli-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# --- submit --caption / --preprocess --------------------------------------------------------

# Flag-form keys of `submit` that mean the same in a caption job.
_CAPTION = {"model.source": "model", "model.revision": "revision"}


def kind_doc(kind: str, dataset: Path, overrides: dict[str, Any],
             config_path: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (job document, remaining overrides) for `submit --caption/--preprocess DATASET`.

    OVERRIDES are submit's flags and --set values; training keys that name the same thing
    (model.source, data.resolution, ...) move into the kind's section; others are refused.
    """
    from ltxq.config import preprocess_keys

    mapping = _CAPTION if kind == "caption" else {
        f"{section}.{name}": key for key, (section, name) in preprocess_keys().items()}
    section: dict[str, Any] = {"dataset": str(dataset.absolute())}
    if config_path is not None:
        if kind != "preprocess":
            raise click.BadParameter("only with --preprocess", param_hint="--config")
        section.update(_training_keys(config_path))
    rest: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if dotted in mapping:
            section[mapping[dotted]] = value
        elif dotted.partition(".")[0] in ("job", kind, "resources") or "." not in dotted:
            rest[key] = value
        else:
            raise ConfigError(f"is a training key; a {kind} job takes [{kind}] keys",
                              key=dotted)
    return {"job": {"kind": kind}, kind: section}, rest


def _training_keys(path: Path) -> dict[str, Any]:
    """Take the keys that shape the preprocessing cache from a training job file."""
    from ltxq.job import parse_job

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=path) from None
    job = parse_job(data, file=path, base_dir=path.parent.absolute())
    if job.kind != "train":
        raise ConfigError(f"must be a training job file, not a {job.kind} job",
                          key="job.kind", file=path)
    from ltxq.config import preprocess_keys

    keys: dict[str, Any] = {}
    for key, (section, name) in preprocess_keys().items():
        value = getattr(getattr(job.config, section), name)
        if value is not None:
            keys[key] = value
    return keys


def submit_kind(spool: Any, kind: str, dataset: Path, overrides: dict[str, Any],
                config_path: Path | None = None, *, unique: bool = False) -> int:
    """Validate and publish a caption or preprocess job for DATASET; return its id."""
    doc, rest = kind_doc(kind, dataset, overrides, config_path)
    job = spool.prepare_doc(doc, base_dir=Path.cwd(), overrides=rest,
                            default_name=dataset.absolute().name)
    return spool.publish(job, unique=unique)
