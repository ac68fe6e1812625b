"""What `status` shows: job records read cheaply from a spool, and the tables drawn from them.

- records: one record per job (what `status --json` prints), invalid and dropped files, folding;
- reader: reads the records through the stat cache, in forked workers when many are uncached;
- statcache: a cache of facts derived from files, keyed on each file's stat;
- forkpool: CPU-bound work spread over forked processes;
- render: the tables.

Other clients (the web dashboard) read through `StatusReader` too. Importing this package
loads no trainer and no web stack.
"""

from __future__ import annotations

from ltxq.status.reader import StatusReader
from ltxq.status.records import NEXT_PENDING, RECENT_FINISHED, StatusView

__all__ = ["NEXT_PENDING", "RECENT_FINISHED", "StatusReader", "StatusView"]
