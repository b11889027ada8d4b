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
