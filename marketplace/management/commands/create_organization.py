from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError
from marketplace.services import organization_create


class Command(BaseCommand):
    help = "Create an organization with one API key; the key is printed alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--role", required=True, choices=["provider", "lab", "both"])
        parser.add_argument("--key-name", default="default")

    def handle(self, *args, name: str, role: str, key_name: str, **options):
        try:
            organization, issued = organization_create(
                name=name, role=role, key_name=key_name, actor_label="manage.py create_organization"
            )
        except DomainError as exc:
            raise CommandError(exc.message)
        self.stdout.write(f"Created organization {organization.name!r} (id {organization.pk}, role {role}).")
        self.stdout.write("API key (shown once, store it now):")
        self.stdout.write(issued.secret)
