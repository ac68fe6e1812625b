"""`ltxq submit`: validate and queue jobs (config files, the flag form, sweeps, job kinds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ltxq.commands.common import parse_ids, pass_spool
from ltxq.spool import Spool


@click.command()
@click.argument("configs", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, TOML-typed: --set optimization.steps=10.")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2,...",
              help="Queue one job per value (repeat: one per combination), e.g. "
                   "--sweep lora.rank=8,16,32.")
@click.option("--priority", type=int, help="Higher runs first (default 0).")
@click.option("--name", help="A name shown by status (default: the file's name).")
@click.option("--after", multiple=True, metavar="ID",
              help="Run only after these jobs are done (repeat or comma-separate).")
@click.option("--unique", is_flag=True,
              help="If an identical config is pending or running, print its id instead.")
@click.option("--max-attempts", type=int, help="Interruptions tolerated before failing.")
@click.option("--on-finish", metavar="CMD", help="Shell command run when the job ends.")
@click.option("--dataset", type=click.Path(file_okay=False, path_type=Path),
              help="Flag form: the dataset folder (no config file needed).")
@click.option("--steps", type=int, help="Flag form: optimization.steps.")
@click.option("--learning-rate", type=float, help="Flag form: optimization.learning_rate.")
@click.option("--validation-prompt", multiple=True, help="Flag form: validation.prompts.")
@click.option("--rank", type=int, help="Flag form: lora.rank.")
@click.option("--model", help="Flag form: model.source (hub id, folder, tiny-random).")
@click.option("--resolution", help="Flag form: data.resolution, WxHxF.")
@click.option("--caption", "caption_dataset", metavar="DATASET",
              type=click.Path(file_okay=False, path_type=Path),
              help="Queue a caption job for DATASET (--model names the captioner).")
@click.option("--preprocess", "preprocess_dataset", metavar="DATASET",
              type=click.Path(file_okay=False, path_type=Path),
              help="Queue a preprocess job for DATASET (model and resolution: --config).")
@click.option("--config", "kind_config", metavar="CONFIG.toml",
              type=click.Path(dir_okay=False, path_type=Path),
              help="With --preprocess: the training job file whose cache to fill.")
@pass_spool
def submit(spool: Spool, configs: tuple[Path, ...], sets: tuple[str, ...],
           sweeps: tuple[str, ...], priority: int | None,
           name: str | None, after: tuple[str, ...], unique: bool, max_attempts: int | None,
           on_finish: str | None, dataset: Path | None, steps: int | None,
           learning_rate: float | None, validation_prompt: tuple[str, ...], rank: int | None,
           model: str | None, resolution: str | None, caption_dataset: Path | None,
           preprocess_dataset: Path | None, kind_config: Path | None) -> None:
    """Validate and queue jobs; print only their ids (one per line).

    Give CONFIG.toml files, or the flag form: --dataset DIR --steps N --learning-rate LR
    --validation-prompt TEXT [--rank R] [--model SOURCE] [--resolution WxHxF].
    """
    from ltxq.sweep import toml_value

    overrides: dict[str, Any] = {}
    flags = {"data.dataset": str(dataset.absolute()) if dataset else None,
             "optimization.steps": steps, "optimization.learning_rate": learning_rate,
             "validation.prompts": list(validation_prompt) or None, "lora.rank": rank,
             "model.source": model, "data.resolution": resolution,
             "job.priority": priority, "job.name": name, "job.max_attempts": max_attempts,
             "job.on_finish": on_finish, "job.after": parse_ids(after) or None}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        overrides[key.strip()] = toml_value(value.strip())
    if model and model.startswith((".", "/", "~")):
        overrides["model.source"] = str(Path(model).expanduser().absolute())
    kind_dataset = caption_dataset or preprocess_dataset
    if kind_dataset or kind_config:  # a caption or preprocess job: ltxq/caption/cli.py
        from ltxq.caption.cli import submit_kind

        if configs or sweeps or (caption_dataset and preprocess_dataset) or not kind_dataset:
            raise click.BadParameter("give --caption DATASET, or --preprocess DATASET "
                                     "[--config CONFIG.toml], without CONFIG.toml files or "
                                     "--sweep", param_hint="--caption/--preprocess")
        click.echo(submit_kind(spool, "caption" if caption_dataset else "preprocess",
                               kind_dataset, overrides, kind_config, unique=unique))
        return
    from ltxq.job import check_name
    from ltxq.sweep import expand, grid_name, parse_sweep

    points = expand(parse_sweep(item) for item in sweeps)
    if not configs and dataset is None:
        raise click.UsageError("give CONFIG.toml files, or --dataset DIR (the flag form)")
    jobs = []  # all valid before any write
    for point in points:
        merged = {**overrides, **point}
        if configs:
            prepared = [spool.prepare(path, merged) for path in configs]
        else:
            prepared = [spool.prepare_doc({}, base_dir=Path.cwd(), overrides=merged,
                                          default_name=dataset.absolute().name)]
        for j in prepared:
            jobs.append(j.with_meta(name=grid_name(j.meta.name, point)))
            check_name(jobs[-1])  # the grid's suffix counts against the name's length
    for job in jobs:
        click.echo(spool.publish(job, unique=unique))
