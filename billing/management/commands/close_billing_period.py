from django.core.management.base import BaseCommand, CommandError

from billing.services import billing_period_close
from core.errors import DomainError
from core.timeutils import parse_period


class Command(BaseCommand):
    help = "Issue the invoices and provider statements of an ended month (YYYY-MM). Running it twice does nothing."

    def add_arguments(self, parser):
        parser.add_argument("--period", required=True, help="YYYY-MM")

    def handle(self, *args, period: str, **options):
        try:
            result = billing_period_close(period=parse_period(period))
        except DomainError as exc:
            raise CommandError(exc.message)
        if result.created:
            self.stdout.write(
                f"Closed {period}: {result.invoices} invoice(s), {result.statements} provider statement(s)."
            )
        else:
            self.stdout.write(f"{period} was already closed; nothing new was created.")
