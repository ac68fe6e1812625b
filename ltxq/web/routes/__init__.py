"""The dashboard's endpoints by concern, as module-level functions of one request.

common (the app's shared Context; page, message, failure), queue, jobs, compare, submit,
datasets, events. Each reaches the spool, the dataset folders, the templates and the watcher
through `request.app.state.ltxq`; the URL table is in ltxq.web.app.
"""
