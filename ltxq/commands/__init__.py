"""The commands of `ltxq`, one module per concern (the group and exit codes are in ltxq/cli.py)."""
