"""Stop within seconds, with instructions, when DATABASE_URL names a server that is not reachable.

With no DATABASE_URL the suite runs on the embedded PostgreSQL server (core.local_postgres),
which the settings start.
"""

import os

import pytest

START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def pytest_sessionstart(session):
    database_url = os.environ.get("DATABASE_URL", "")
    if database_url.startswith(("postgres://", "postgresql://")):
        import dj_database_url
        import psycopg

        params = dj_database_url.parse(database_url)
        try:
            # The server's maintenance database: the test database is created by the run itself.
            psycopg.connect(
                host=params["HOST"] or "127.0.0.1",
                port=params["PORT"] or 5432,
                user=params["USER"] or None,
                password=params["PASSWORD"] or None,
                dbname="postgres",
                connect_timeout=3,
            ).close()
        except psycopg.Error as exc:
            pytest.exit(
                f"PostgreSQL is not reachable at DATABASE_URL={database_url}: {exc}\n"
                f"Start it (e.g. `{START_POSTGRES}`) or point DATABASE_URL at a running server.",
                returncode=3,
            )
    # Without Redis the tests that need a real Celery worker skip, each saying why; the
    # others run with tasks in-process.
