"""The `ltxq` command line: click commands, exit codes, and calls into the spool and render.

Exit codes: 0 success; 2 bad usage or an invalid config (the message names file and key);
1 any other failure (no such job, wrong state). The trainer is imported only by the commands
that train; submit/status/cancel/logs/clear/workers never load torch. Only submit and daemon
make a spool; every other spool command needs one (`ltxq: no spool at PATH`, exit 1).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from ltxq.cli_params import DAY, Duration, Seconds
from ltxq.errors import ConfigError, LtxqError, WrongState
from ltxq.spool import FINISHED, Spool, State, stem

STATE_CHOICES = [str(s) for s in State] + ["all"]
# The commands that own a spool may create one (DESIGN habit 14); the others need it to exist.
CREATING = frozenset({"submit", "daemon"})


class LtxqGroup(click.Group):
    """A group that turns ltxq's own errors into one stderr line and an exit code."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.BadParameter as e:  # --spool naming a file: one line, like the others
            click.echo(f"ltxq: {e.format_message()}", err=True)
            raise click.exceptions.Exit(2) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.BadParameter as e:  # a bad value: one line naming the option, like a config
            click.echo(f"ltxq: {e.format_message()}", err=True)
            ctx.exit(2)
        except LtxqError as e:
            click.echo(f"ltxq: {e}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:  # `ltxq status | head`: the reader left; that is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except OSError as e:  # a spool on a full disk, no permission: not a traceback
            click.echo(f"ltxq: {e}", err=True)
            ctx.exit(1)


@click.group(cls=LtxqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spool", "spool_path", envvar="LTXQ_SPOOL", default="spool", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Spool folder (env LTXQ_SPOOL). submit and daemon make it (in a new or "
                   "empty folder); the other commands need it to exist.")
@click.version_option(package_name="ltxq")
@click.pass_context
def cli(ctx: click.Context, spool_path: Path) -> None:
    """ltxq: a file-spool job queue for LTX-Video LoRA fine-tuning."""
    ctx.obj = Spool(spool_path)


def main() -> None:
    """Run the command line (the `ltxq` console script)."""
    cli(prog_name="ltxq")


def pass_spool(f: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the command the Spool; it must exist unless the command is one of CREATING.

    Checked here, after the command's arguments were parsed, so `--help` and usage errors need
    no spool. submit makes the spool when it publishes (after validating), daemon at its start.
    """
    @functools.wraps(f)
    def with_spool(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        spool = ctx.find_object(Spool)
        assert spool is not None, "the group makes the Spool"
        if ctx.command.name not in CREATING:
            spool.require()
        return f(spool, *args, **kwargs)

    return with_spool


# --- helpers -------------------------------------------------------------------------------


def _toml_value(text: str) -> Any:
    """Parse VALUE of --set KEY=VALUE as TOML (10, 2e-4, true, ["a"]); else keep the text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _ids(values: tuple[str, ...]) -> list[int]:
    """Accept job ids as `3 4`, `3,4` or repeated options."""
    out = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            if not part.isdigit():
                raise click.BadParameter(f"not a job id: {part!r}")
            out.append(int(part))
    return out


# --- submit --------------------------------------------------------------------------------


@cli.command()
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
    overrides: dict[str, Any] = {}
    flags = {"data.dataset": str(dataset.absolute()) if dataset else None,
             "optimization.steps": steps, "optimization.learning_rate": learning_rate,
             "validation.prompts": list(validation_prompt) or None, "lora.rank": rank,
             "model.source": model, "data.resolution": resolution,
             "job.priority": priority, "job.name": name, "job.max_attempts": max_attempts,
             "job.on_finish": on_finish, "job.after": _ids(after) or None}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        overrides[key.strip()] = _toml_value(value.strip())
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


# --- status --------------------------------------------------------------------------------


def _view(spool: Spool, ids: list[int], state: str | None, name: str | None,
          *, fold: bool = False) -> Any:
    """Return the StatusView of `status`: these IDS, or the jobs in STATE matching NAME."""
    from fnmatch import fnmatchcase

    from ltxq.status import StatusReader, StatusView

    reader = StatusReader(spool)
    if ids:
        records = [r for r in reader.records_of(ids)
                   if not name or fnmatchcase(r["name"], name)]
        return StatusView(records, {})
    return reader.view(state, name=name, fold=fold)


def _records(spool: Spool, ids: list[int], state: str | None,
             name: str | None) -> list[dict[str, Any]]:
    """Return the `status --json` records (never folded)."""
    return _view(spool, ids, state, name).records


@cli.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--state", type=click.Choice(STATE_CHOICES), help="Only jobs in this state.")
@click.option("--name", metavar="GLOB", help="Only jobs whose name matches (e.g. 'cake*').")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of job records.")
@click.option("--all", "show_all", is_flag=True,
              help="Show every job (no folding of old finished or later pending jobs).")
@click.option("--watch", type=Seconds(0, DAY), is_flag=False, flag_value=5.0, default=None,
              metavar="[SECONDS]", help="Refresh in place every SECONDS (default 5).")
@pass_spool
def status(spool: Spool, ids: tuple[int, ...], state: str | None, name: str | None,
           as_json: bool, show_all: bool, watch: float | None) -> None:
    """Show jobs (all states by default).

    The table folds old finished jobs and pending jobs beyond the next 20 to run into summary
    lines (--all shows every row); --json always lists every job.
    """
    from ltxq.status.render import status_table

    def render() -> str:
        if as_json:
            return json.dumps(_records(spool, list(ids), state, name), indent=2)
        view = _view(spool, list(ids), state, name,
                     fold=not ids and state is None and not show_all)
        return status_table(view.records, paused=spool.paused, folded=view.folded)

    if watch is None:
        click.echo(render())
        return
    try:
        while True:
            text = render()
            # Home + clear to end: the table is redrawn in place, without flicker or scroll.
            click.echo(f"\x1b[H\x1b[2J{time.strftime('%H:%M:%S')}  every {watch:g}s, "
                       f"Ctrl-C to stop\n{text}")
            sys.stdout.flush()
            time.sleep(watch)
    except KeyboardInterrupt:
        pass


# --- job commands --------------------------------------------------------------------------


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@pass_spool
def cancel(spool: Spool, ids: tuple[int, ...]) -> None:
    """Cancel jobs: pending ones at once, running ones at their next step."""
    failed = None
    for job_id in ids:
        try:
            state = spool.cancel(job_id)
        except LtxqError as e:
            click.echo(f"ltxq: {e}", err=True)
            failed = e
            continue
        if state is State.RUNNING:
            click.echo(f"{job_id} stopping (cancel requested; it stops at its next step)")
        else:
            click.echo(f"{job_id} cancelled")
    if failed is not None:
        sys.exit(failed.exit_code)


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--fresh", is_flag=True, help="Queue a new job (new id, new output) instead.")
@pass_spool
def resume(spool: Spool, ids: tuple[int, ...], fresh: bool) -> None:
    """Queue failed or cancelled jobs again; they continue from their latest checkpoint."""
    for job_id in ids:
        click.echo(spool.resume(job_id, fresh=fresh))


@cli.command()
@click.argument("job_id", metavar="ID", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("-n", "--lines", type=int, default=None, help="Only the last N lines.")
@pass_spool
def logs(spool: Spool, job_id: int, follow: bool, lines: int | None) -> None:
    """Print a job's log (progress, checkpoints, samples, errors)."""
    if lines is not None and lines < 0:
        raise ConfigError(f"must be 0 or more, got {lines}", key="--lines")
    spool.get(job_id)
    path = spool.log_path(job_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    text = data.decode("utf-8", errors="replace")
    if lines is None and follow:
        lines = 20
    shown = text.splitlines(keepends=True)
    if lines is not None:
        shown = shown[-lines:] if lines > 0 else []
    click.echo("".join(shown), nl=False)
    if not follow:
        return
    pos = len(data)
    try:
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                pos += len(chunk)
                click.echo(chunk.decode("utf-8", errors="replace"), nl=False)
            elif spool.state_of(job_id) in FINISHED | {None}:
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--state", "states", multiple=True, type=click.Choice(
    ["done", "failed", "cancelled", "all"]), help="Which finished jobs (default: done).")
@click.option("--older-than", type=Duration(), metavar="DURATION",
              help="Only jobs finished before, e.g. 7d (s, m, h, d, w; at most 36500d).")
@pass_spool
def clear(spool: Spool, states: tuple[str, ...], older_than: timedelta | None) -> None:
    """Remove finished jobs' spool files and logs (never their outputs)."""
    chosen = ["done", "failed", "cancelled"] if "all" in states else list(states) or ["done"]
    ids = spool.clear(chosen, older_than=older_than)
    click.echo(f"cleared {len(ids)} job(s)" + (": " + " ".join(map(str, ids)) if ids else ""))


@cli.command(context_settings={"ignore_unknown_options": True})  # so `priority 3 -1` works
@click.argument("job_id", metavar="ID", type=int)
@click.argument("priority", metavar="N", type=int)
@pass_spool
def priority(spool: Spool, job_id: int, priority: int) -> None:
    """Set the priority of a pending job (higher runs first)."""
    spool.set_priority(job_id, priority)
    click.echo(f"{job_id} priority {priority}")


@cli.command()
@click.argument("job_id", metavar="ID", type=int)
@pass_spool
def edit(spool: Spool, job_id: int) -> None:
    """Edit a pending job in $EDITOR; it is validated and replaced atomically.

    If a daemon claims the job meanwhile the edit is refused and your text is kept.
    """
    entry = spool.get(job_id)
    if entry.state is not State.PENDING:
        raise WrongState(f"job {job_id} is {entry.state}; only pending jobs can be edited")
    original = entry.path.read_bytes()
    copy = spool.dir("tmp") / f"edit-{stem(job_id)}-{os.getpid()}.toml"
    copy.write_bytes(original)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    rc = subprocess.call([*shlex.split(editor), str(copy)])
    if rc != 0:
        raise LtxqError(f"the editor exited with status {rc}; job {job_id} unchanged "
                        f"(your text: {copy})")
    text = copy.read_bytes()
    if text == original:
        copy.unlink()
        click.echo(f"{job_id} unchanged")
        return
    try:
        spool.replace_pending(job_id, original, text.decode("utf-8", errors="replace"))
    except LtxqError as e:
        click.echo(f"ltxq: {e}", err=True)
        click.echo(f"ltxq: your edited text is kept in {copy}", err=True)
        sys.exit(e.exit_code)
    copy.unlink()
    click.echo(f"{job_id} updated")


@cli.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--poll", type=Seconds(0, DAY), default=1.0, show_default=True,
              help="Seconds between looks.")
@click.option("--timeout", type=Seconds(0, 365 * DAY, low_ok=True), default=None,
              help="Give up after SECONDS (exit 1).")
@pass_spool
def wait(spool: Spool, ids: tuple[int, ...], poll: float, timeout: float | None) -> None:
    """Wait until the jobs end; exit 0 only if every one of them is done."""
    for job_id in ids:
        spool.get(job_id)  # JobNotFound up front, not after an hour
    deadline = time.monotonic() + timeout if timeout is not None else None
    states: dict[int, State | None] = {}
    try:
        while True:
            states = {i: spool.state_of(i) for i in ids}
            if all(s in FINISHED or s is None for s in states.values()):
                break
            if deadline is not None and time.monotonic() >= deadline:
                click.echo("ltxq: timed out waiting", err=True)
                sys.exit(1)
            time.sleep(poll)
    except KeyboardInterrupt:
        sys.exit(130)
    for job_id, state in states.items():
        error = ""
        if state is State.FAILED:
            error = f": {spool.get(job_id).job.meta.error}"
        click.echo(f"{job_id} {state or 'gone (cleared)'}{error}")
    if any(s is not State.DONE for s in states.values()):
        sys.exit(1)


@cli.command()
@pass_spool
def pause(spool: Spool) -> None:
    """Stop daemons from claiming new jobs (running jobs go on); holds across restarts."""
    spool.pause()
    click.echo("paused: daemons claim no new jobs until `ltxq unpause`")


@cli.command()
@pass_spool
def unpause(spool: Spool) -> None:
    """Let daemons claim jobs again."""
    spool.unpause()
    click.echo("unpaused")


# --- daemons -------------------------------------------------------------------------------


@cli.command()
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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_spool
def workers(spool: Spool, as_json: bool) -> None:
    """List live daemons on this spool with their device, job and step."""
    from ltxq.status.render import workers_table
    from ltxq.workers import live_workers

    found = live_workers(spool)
    click.echo(json.dumps(found, indent=2) if as_json else workers_table(found))


# --- the trainer, directly -----------------------------------------------------------------


def _read_config_file(path: Path) -> Any:
    from ltxq.job import parse_job

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=path) from None
    return parse_job(data, file=path, base_dir=path.parent.absolute(),
                     require_dataset_exists=True)


@cli.command()
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


@cli.command()
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


@cli.command("demo-data")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clips", type=click.IntRange(1, 1000), default=4, show_default=True)
def demo_data(directory: Path, clips: int) -> None:
    """Write a tiny synthetic video dataset (moving shapes with captions) into DIR."""
    from ltxq.trainer.demo_data import write_demo_dataset

    click.echo(write_demo_dataset(directory, clips=clips))




# --- the dashboard (ltxq/web/cli.py; the web stack loads only when these run) ---------------

from ltxq.web import cli as _web_cli  # noqa: E402 - after the group they join

cli.add_command(_web_cli.web)
cli.add_command(_web_cli.up)

from ltxq.caption.cli import caption as _caption  # noqa: E402 - issue 12: `ltxq caption`

cli.add_command(_caption)
