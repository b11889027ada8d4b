"""Database helpers shared by the apps."""

from django.db import migrations


def postgres_only_sql(forward: list[str], backward: list[str]) -> migrations.RunPython:
    """A migration operation that runs raw SQL on PostgreSQL and does nothing elsewhere.

    Exclusion constraints and composite foreign keys exist only on PostgreSQL; the embedded
    SQLite mode serialises writers instead.
    """

    def run(statements: list[str]):
        def apply(apps, schema_editor):
            if schema_editor.connection.vendor != "postgresql":
                return
            with schema_editor.connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)  # no parameters: '%' in PL/pgSQL stays literal

        return apply

    return migrations.RunPython(run(forward), run(backward))


def decimal_sums(queryset, *, by: tuple[str, ...], fields: tuple[str, ...]) -> dict[tuple, tuple]:
    """Exact Decimal sums of ``fields`` grouped by ``by``.

    PostgreSQL sums NUMERIC exactly. SQLite stores decimals with NUMERIC affinity and its
    SUM goes through floating point, so there the rows are summed in Python instead.
    """
    from collections import defaultdict
    from decimal import Decimal

    from django.db import connections
    from django.db.models import Sum

    zero = Decimal(0)
    if connections[queryset.db].vendor == "postgresql":
        sums = {f"total_{index}": Sum(name) for index, name in enumerate(fields)}
        if not by:
            totals = queryset.order_by().aggregate(**sums)
            return {(): tuple(totals[key] or zero for key in sums)}
        rows = queryset.order_by().values_list(*by).annotate(**sums)
        return {tuple(row[: len(by)]): tuple(value or zero for value in row[len(by) :]) for row in rows}
    totals: dict[tuple, list] = defaultdict(lambda: [zero] * len(fields))
    for row in queryset.order_by().values_list(*by, *fields):
        bucket = totals[tuple(row[: len(by)])]
        for index, value in enumerate(row[len(by) :]):
            if value is not None:
                bucket[index] += value
    return {key: tuple(values) for key, values in totals.items()}


def decimal_sum(queryset, field: str):
    """The exact Decimal sum of one field (0 when there are no rows)."""
    from decimal import Decimal

    return decimal_sums(queryset, by=(), fields=(field,)).get((), (Decimal(0),))[0]


def bulk_insert(model, columns: tuple[str, ...], rows) -> None:
    """Insert many rows without building model instances: COPY on PostgreSQL.

    For write-heavy batch jobs (a month's invoice lines, ledger entries); values go in as
    they are, so they must already be what the columns hold (Decimal, date, ids).
    """
    from django.db import connections, router

    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        model.objects.bulk_create((model(**dict(zip(columns, row, strict=True))) for row in rows), batch_size=2000)
        return
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(model._meta.db_table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    # Errors come out as Django's (IntegrityError, ...), as from any other query.
    with connection.wrap_database_errors, connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
