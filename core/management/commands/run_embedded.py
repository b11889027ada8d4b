from django.core.management.commands.runserver import Command as RunserverCommand

from core.scheduler import EmbeddedScheduler


class Command(RunserverCommand):
    help = "Serve the API with the periodic jobs running in-process (embedded mode)."

    def handle(self, *args, **options):
        options["use_reloader"] = False
        EmbeddedScheduler().start()
        super().handle(*args, **options)
