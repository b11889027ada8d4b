"""Database helpers shared by the apps."""

from django.db import connections, router
from psycopg import sql


def bulk_insert(model, columns: tuple[str, ...], rows) -> None:
    """Insert many rows with COPY, without building model instances.

    For write-heavy batch jobs; values go in as they are, so they must already be what the
    columns hold (Decimal, date, ids).
    """
    connection = connections[router.db_for_write(model)]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(model._meta.db_table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    # Errors come out as Django's (IntegrityError, ...), as from any other query.
    with connection.wrap_database_errors, connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def decimal_sums(queryset, *, by: tuple[str, ...], fields: tuple[str, ...]) -> dict[tuple, tuple]:
    """Sums of ``fields`` grouped by ``by`` (0 where there are none). Going away: use Sum."""
    from decimal import Decimal

    from django.db.models import Sum

    zero = Decimal(0)
    sums = {f"total_{index}": Sum(name) for index, name in enumerate(fields)}
    if not by:
        totals = queryset.order_by().aggregate(**sums)
        return {(): tuple(totals[key] or zero for key in sums)}
    rows = queryset.order_by().values_list(*by).annotate(**sums)
    return {tuple(row[: len(by)]): tuple(value or zero for value in row[len(by) :]) for row in rows}


def decimal_sum(queryset, field: str):
    """The sum of one field (0 when there are no rows). Going away: use Sum."""
    from decimal import Decimal

    return decimal_sums(queryset, by=(), fields=(field,)).get((), (Decimal(0),))[0]
