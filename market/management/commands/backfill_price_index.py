from datetime import date

from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError
from market.index import last_completed_day, price_index_compute


def _day(value: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a day: use YYYY-MM-DD.") from None


class Command(BaseCommand):
    help = (
        "Compute the daily price index of the UTC days from --from to --to (default: yesterday) not computed "
        "yet. Running it twice does nothing; --force computes the days again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="first", required=True, type=_day, help="YYYY-MM-DD")
        parser.add_argument("--to", dest="last", type=_day, help="YYYY-MM-DD, a completed day; default yesterday")
        parser.add_argument("--force", action="store_true", help="compute days already computed again")

    def handle(self, *args, first: date, last: date | None, force: bool, **options):
        last = last or last_completed_day()
        try:
            days = price_index_compute(first=first, last=last, force=force)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        if days:
            self.stdout.write(f"Computed {len(days)} day(s) of the price index, {days[0]} to {days[-1]}.")
        else:
            self.stdout.write(f"Every day from {first} to {last} was already computed.")
