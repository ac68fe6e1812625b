"""Executors: what runs the jobs a daemon claims (`base.Executor`): in this process (`local`) or
as Slurm batch jobs (`slurm`)."""
