import os
from pathlib import Path

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# A task logs under the id of the request that enqueued it (core.observability). The handlers
# are imported when first called: this module is imported before Django's settings are.
@before_task_publish.connect
def _request_id_send(**kwargs) -> None:
    from core.observability import task_request_id_send

    task_request_id_send(**kwargs)


@task_prerun.connect
def _request_id_take(**kwargs) -> None:
    from core.observability import task_request_id_take

    task_request_id_take(**kwargs)


@task_postrun.connect
def _request_id_drop(**kwargs) -> None:
    from core.observability import task_request_id_drop

    task_request_id_drop(**kwargs)


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
