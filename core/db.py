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


class CompiledQuery:
    """A queryset turned into SQL once per process, then run again with other values.

    For the few reads on every request (the API key's lookup): building and compiling a
    queryset costs several times what PostgreSQL spends answering it. ``build`` takes one
    keyword per name (``str`` or ``int``: the type of its values) and returns the queryset;
    it runs once per database, with a marker of that type in place of each value, so the
    rule it states stays written once, in the ORM. Each marker must reach the SQL as one
    parameter, and ``build`` must not read anything that changes, such as the clock. Rows
    come back as ``values_list`` gives them, through the fields' converters.
    """

    def __init__(self, build, **kinds: type):
        if set(kinds.values()) - {str, int}:
            raise TypeError("a value is a str or an int")
        self._build = build
        self._kinds = kinds
        self._compiled: dict[str, tuple] = {}

    def _compile(self, using: str) -> tuple:
        # Values no caller sends: a text with NUL characters (PostgreSQL's text refuses them),
        # and integers below any key.
        markers = {
            name: f"\x00{name}\x00" if kind is str else -(2**62) - number
            for number, (name, kind) in enumerate(self._kinds.items())
        }
        compiler = self._build(**markers).using(using).query.get_compiler(using)
        statement, params = compiler.as_sql()
        if compiler.has_extra_select:  # execute_sql would trim these columns; rows() does not
            raise ValueError("the queryset selects columns beyond its values")
        slots = {}
        for name, marker in markers.items():
            found = [index for index, param in enumerate(params) if type(param) is type(marker) and param == marker]
            if len(found) != 1:
                raise ValueError(f"{name!r} reaches the SQL {len(found)} times, not once")
            slots[name] = found[0]
        return compiler, statement, tuple(params), slots

    def rows(self, *, using: str = "default", **values) -> list[tuple]:
        """The queryset's rows for these values."""
        compiled = self._compiled.get(using)
        if compiled is None:
            compiled = self._compiled[using] = self._compile(using)
        compiler, statement, params, slots = compiled
        bound = list(params)
        for name, value in values.items():
            bound[slots[name]] = self._kinds[name](value)
        with connections[using].cursor() as cursor:
            cursor.execute(statement, bound)
            fetched = cursor.fetchall()
        return list(compiler.results_iter(results=[fetched], tuple_expected=True))
