from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.core.management.commands.runserver import naiveip_re
from django.db import transaction

from backoffice.demo import demo_exports, demo_exports_text, demo_summary, seed_demo_market

DEFAULT_ADDRPORT = "127.0.0.1:8000"


def base_url(addrport: str) -> str:
    """Where a server started with runserver's ``addrport`` answers, as a client calls it."""
    match = naiveip_re.match(addrport)
    if match is None:
        raise CommandError(f"{addrport!r} is not a port or an address:port.")
    return f"http://{match['addr'] or '127.0.0.1'}:{match['port']}"


class Command(BaseCommand):
    help = (
        "Seed (or refresh) the demo market and print an admin login, fresh demo API keys and the "
        "shell exports the README's walkthrough starts from."
    )

    def add_arguments(self, parser):
        parser.add_argument("--admin-password", default="admin")
        parser.add_argument(
            "--addrport",
            default=DEFAULT_ADDRPORT,
            help=f"Where the server will listen, as runserver takes it ({DEFAULT_ADDRPORT} by default): "
            "the printed URLs point there.",
        )

    def handle(self, *args, admin_password: str, addrport: str, **options):
        url = base_url(addrport)
        with transaction.atomic():
            user_model = get_user_model()
            admin, created = user_model.objects.get_or_create(
                username="admin", defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.com"}
            )
            if created:
                admin.set_password(admin_password)
                admin.save()
            keys = seed_demo_market()
        self.stdout.write("")
        summary = demo_summary()
        self.stdout.write(
            f"Demo market ready: {summary['listings']} active listings, {summary['contracts']} contracts, "
            f"{summary['open_requests']} open request(s)."
        )
        self.stdout.write(
            f"  Admin:    {url}/admin/  user 'admin'"
            + (f" password '{admin_password}'" if created else " (password unchanged)")
        )
        self.stdout.write(f"  API docs: {url}/api/v1/docs/")
        if not settings.DEBUG:
            self.stdout.write("  (DEBUG is off: change the admin password.)")
        self.stdout.write("")
        self.stdout.write("Paste into a shell to follow the README's walkthrough (keys are new on every seed):")
        self.stdout.write(demo_exports_text(demo_exports(keys=keys, base_url=url)))
        self.stdout.write("")
