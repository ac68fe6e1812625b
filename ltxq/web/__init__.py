"""The web dashboard (`ltxq web`, `ltxq up`): one more client of the spool.

app (the URL table, guard and lifespan), routes/ (the endpoints by concern: queue, jobs,
compare, submit, datasets, events), data (what pages show, from ltxq.status and output
folders), form (the New-job form from ltxq.config's field docs), datasets (dataset folders),
security (Host/Origin, token, CSRF), watcher (the one spool watcher feeding server-sent
events), cli (the commands).
Importing this package loads nothing: the quick commands never import the web stack.
"""
