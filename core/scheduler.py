"""Run the beat schedule inside one process: the embedded mode's stand-in for `celery beat`."""

import logging
import threading
from datetime import timedelta

from celery import current_app
from celery.schedules import schedule as celery_schedule
from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)


class EmbeddedScheduler(threading.Thread):
    def __init__(self, tick_seconds: float = 1.0):
        super().__init__(name="embedded-beat", daemon=True)
        self.tick_seconds = tick_seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        app = current_app  # the project's app, configured from the settings
        app.loader.import_default_modules()
        entries = []
        for entry in settings.CELERY_BEAT_SCHEDULE.values():
            schedule = entry["schedule"]
            if isinstance(schedule, int | float | timedelta):
                schedule = celery_schedule(run_every=schedule, app=app)
            entries.append([entry["task"], schedule, schedule.now()])
        while not self.stopped.wait(self.tick_seconds):
            for entry in entries:
                task_name, schedule, last_run = entry
                due, _ = schedule.is_due(last_run)
                if not due:
                    continue
                entry[2] = schedule.now()
                try:
                    close_old_connections()
                    app.tasks[task_name].apply(throw=True)
                except Exception:
                    logger.exception("periodic task %s failed", task_name)
                finally:
                    close_old_connections()
