"""gunicorn's settings for the API: `gunicorn -c config/gunicorn.conf.py config.wsgi --workers 4 ...`.

With PROMETHEUS_MULTIPROC_DIR set, each worker keeps its metrics in files of that directory
and /metrics adds up every file (prometheus_client's multiprocess mode, core.metrics). The
files outlive the processes, so the master empties the directory when it starts (else the
last run's counts would be served again) and tells the library when a worker exits.
"""

import os
from pathlib import Path

from prometheus_client import multiprocess

wsgi_app = "config.wsgi:application"
# With --access-logfile, each line ends with the request's id (X-Request-ID) to find its logs.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'


def _metrics_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def on_starting(server) -> None:
    """Before any worker: create the metrics directory, or empty it of the last run's files."""
    directory = _metrics_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):  # only the library's files, whatever else is there
        stale.unlink()


def child_exit(server, worker) -> None:
    """A worker exited: drop its live gauges (its counters and histograms still count)."""
    if _metrics_dir() is not None:
        multiprocess.mark_process_dead(worker.pid)
