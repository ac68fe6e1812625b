"""Commands that run things: `daemon`, `workers`, and the trainer directly (`train`,
`preprocess`, `demo-data`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from ltxq.cli_params import DAY, Seconds
from ltxq.commands.common import pass_spool
from ltxq.errors import ConfigError
from ltxq.spool import Spool


@click.command()
@click.option("--once", is_flag=True, help="Run at most one job, then exit.")
@click.option("--exit-when-idle", is_flag=True, help="Exit when no job can be claimed.")
@click.option("--poll", type=Seconds(0, DAY), default=2.0, show_default=True,
              help="Seconds between looks at an idle spool.")
@click.option("--device", help="cpu, cuda, or cuda:N (pins the daemon to GPU N).")
@click.option("--on-finish", metavar="CMD",
              help="Shell command run after each job ends (env LTXQ_JOB_ID, LTXQ_JOB_STATE, ...).")
@click.option("--trainer", envvar="LTXQ_TRAINER", hidden=True,
              help="module:function to train with (tests).")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local",
              show_default=True,
              help="local: train here, one job at a time; slurm: submit each job to Slurm.")
@click.option("--partition", help="[slurm] Partition (a job's [resources].partition wins).")
@click.option("--gpus", type=click.IntRange(min=0), default=0, show_default=True,
              help="[slurm] GPUs per job (at least the job's processes when > 0).")
@click.option("--time-limit", metavar="TIME", help="[slurm] sbatch --time, e.g. 04:00:00.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG",
              help="[slurm] Extra sbatch argument (repeatable), e.g. --sbatch-arg=--qos=low.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=4, show_default=True,
              help="[slurm] Slurm jobs kept in flight at once.")
@click.option("--warn-before", metavar="SECONDS", type=click.IntRange(min=1), default=120,
              show_default=True,
              help="[slurm] SIGUSR1 this long before the time limit: checkpoint and requeue.")
@click.option("--cancel-grace", metavar="SECONDS", type=Seconds(0, DAY, low_ok=True),
              default=60.0, show_default=True,
              help="[slurm] Wait this long for a cancel, then scancel.")
@pass_spool
def daemon(spool: Spool, once: bool, exit_when_idle: bool, poll: float, device: str | None,
           on_finish: str | None, trainer: str | None, executor: str, partition: str | None,
           gpus: int, time_limit: str | None, sbatch_args: tuple[str, ...], max_jobs: int,
           warn_before: int, cancel_grace: float) -> None:
    """Run queued jobs one at a time, in this process, until stopped (SIGTERM: requeue, exit 0).

    With --executor slurm, submit each job as a Slurm batch job instead and follow it; stopping
    this daemon leaves those running (the next Slurm daemon adopts them).
    """
    from ltxq.daemon import Daemon, DaemonOptions, pin_device

    if executor == "slurm" and device:
        raise click.BadParameter("Slurm assigns the GPUs: use --gpus", param_hint="--device")
    if device and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise click.BadParameter(f"expected cpu, cuda, cuda:N or mps, got {device!r}",
                                 param_hint="--device")
    spool.create()  # the one command besides submit that may make a spool (arguments checked)
    if executor == "slurm":
        from ltxq.executors.slurm import executor as slurm
        from ltxq.workers import Registration

        slurm.require_controller()
        options = DaemonOptions(once=once, exit_when_idle=exit_when_idle, poll=poll,
                                trainer=trainer, on_finish=on_finish)
        sys.exit(Daemon(spool, options, slurm.SlurmExecutor(
            spool, Registration(spool, None, executor="slurm"), slurm.SlurmOptions(
                partition=partition, gpus=gpus, time_limit=time_limit, sbatch_args=sbatch_args,
                max_jobs=max_jobs, warn_before=warn_before, cancel_grace=cancel_grace),
            trainer=trainer)).run())
    trainer_device = pin_device(device)  # before anything can import torch
    options = DaemonOptions(once=once, exit_when_idle=exit_when_idle, poll=poll, device=device,
                            trainer_device=trainer_device, trainer=trainer, on_finish=on_finish)
    sys.exit(Daemon(spool, options).run())


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_spool
def workers(spool: Spool, as_json: bool) -> None:
    """List live daemons on this spool with their device, job and step."""
    from ltxq.status.render import json_array, workers_table
    from ltxq.workers import live_workers

    found = live_workers(spool)
    click.echo(json_array(found) if as_json else workers_table(found))




def _read_config_file(path: Path) -> Any:
    from ltxq.job import parse_job

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=path) from None
    return parse_job(data, file=path, base_dir=path.parent.absolute(),
                     require_dataset_exists=True)


@click.command()
@click.argument("config", metavar="CONFIG.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Default: {output.root}/lora_r{rank}_{config name}.")
@click.option("--device", help="cpu, cuda, or cuda:N.")
def train(config: Path, output_dir: Path | None, device: str | None) -> None:
    """Train CONFIG.toml in the foreground, bypassing the queue (resumes its checkpoints)."""
    from ltxq.daemon import pin_device

    trainer_device = pin_device(device)
    job = _read_config_file(config)
    cfg = job.config
    out = output_dir or Path(cfg.output.root) / f"lora_r{cfg.lora.rank}_{config.stem}"
    from ltxq.run import Outcome
    from ltxq.trainer.console import run_foreground

    result = run_foreground(cfg, out.absolute(), trainer_device)
    if result.outcome != Outcome.COMPLETED:
        click.echo(f"stopped at step {result.step}/{result.total_steps}; run the same command "
                   "again to resume", err=True)
        sys.exit(130)


@click.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Take model and resolution from this config (its dataset is replaced).")
@click.option("--model", help="model.source without --config (default: the config default).")
@click.option("--resolution", help="data.resolution without --config, WxHxF.")
def preprocess(dataset: Path, config_path: Path | None, model: str | None,
               resolution: str | None) -> None:
    """Encode DATASET into the preprocessing cache ahead of training."""
    import dataclasses

    from ltxq.config import parse_config

    if config_path is not None:
        cfg = _read_config_file(config_path).config
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, dataset=str(dataset.absolute())))
        if not dataset.is_dir():
            raise ConfigError(f"dataset folder not found: {dataset}", key="data.dataset")
    else:
        raw: dict[str, Any] = {"data": {"dataset": str(dataset)}}
        if model:
            raw["model"] = {"source": model}
        if resolution:
            raw["data"]["resolution"] = resolution
        cfg = parse_config(raw, base_dir=Path.cwd(), require_dataset_exists=True)
    from ltxq.trainer.preprocess import preprocess_cli

    sys.exit(preprocess_cli(cfg))


@click.command("demo-data")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clips", type=click.IntRange(1, 1000), default=4, show_default=True)
def demo_data(directory: Path, clips: int) -> None:
    """Write a tiny synthetic video dataset (moving shapes with captions) into DIR."""
    from ltxq.trainer.demo_data import write_demo_dataset

    click.echo(write_demo_dataset(directory, clips=clips))
