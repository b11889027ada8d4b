import signal
import sys

from django.core.management import call_command
from django.core.management.commands.runserver import Command as RunserverCommand

from core.scheduler import EmbeddedScheduler


class Command(RunserverCommand):
    help = (
        "The embedded mode in one process: migrate, seed the demo market, then serve the API with "
        "the periodic jobs running in-process. With no DATABASE_URL this process owns the private "
        "PostgreSQL server under var/ and stops it when it exits."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--no-seed", action="store_true", help="Serve the database as it is.")

    def handle(self, *args, **options):
        options["use_reloader"] = False  # one process: a reloader's child would not own the server
        # Stopped by a signal, still exit normally, so the embedded server is stopped with it.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        call_command("migrate", interactive=False, verbosity=0)
        if not options["no_seed"]:
            # The banner's URLs and exports name the address this server is about to listen on.
            addrport = options["addrport"] or f"{self.default_addr}:{self.default_port}"
            call_command("seed_demo", addrport=addrport)
        EmbeddedScheduler().start()
        super().handle(*args, **options)
