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
