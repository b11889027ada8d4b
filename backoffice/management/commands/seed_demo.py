from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from backoffice.demo import demo_summary, seed_demo_market


class Command(BaseCommand):
    help = "Seed (or refresh) the demo market and print an admin login and fresh demo API keys."

    def add_arguments(self, parser):
        parser.add_argument("--admin-password", default="admin")

    def handle(self, *args, admin_password: str, **options):
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
            "  Admin:    http://127.0.0.1:8000/admin/  user 'admin'"
            + (f" password '{admin_password}'" if created else " (password unchanged)")
        )
        self.stdout.write("  API docs: http://127.0.0.1:8000/api/v1/docs/")
        for name, secret in keys.items():
            self.stdout.write(f"  {name:<22} {secret}")
        if not settings.DEBUG:
            self.stdout.write("  (DEBUG is off: change the admin password.)")
