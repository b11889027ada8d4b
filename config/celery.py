import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def serve_metrics(**kwargs) -> None:
    """With WORKER_METRICS_PORT, the worker serves its metrics (matching runs, their duration and
    the requests they filled) for Prometheus on its own bind (core.metrics). Its pool's
    processes keep them in PROMETHEUS_MULTIPROC_DIR, emptied here of the last run's files
    before any is forked (as config/gunicorn.conf.py does for the API)."""
    from django.conf import settings

    if settings.WORKER_METRICS_PORT:
        if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            for stale in Path(directory).glob("*.db"):
                stale.unlink()
        from core.metrics import serve_worker_metrics

        serve_worker_metrics(port=settings.WORKER_METRICS_PORT, addr=settings.WORKER_METRICS_ADDR)
