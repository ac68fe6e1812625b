"""`ltxq daemon --executor slurm`: the Slurm client, the executor, and what runs on the node."""
