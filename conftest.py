"""Stop within seconds, with instructions, when the test services are not reachable."""

import os

import pytest

START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'


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
    redis_url = os.environ.get("REDIS_URL", "")
    if redis_url:
        import redis

        try:
            redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3).ping()
        except redis.RedisError as exc:
            pytest.exit(
                f"Redis is not reachable at REDIS_URL={redis_url}: {exc}\n"
                f"Start it (e.g. `{START_REDIS}`) or point REDIS_URL at a running server.",
                returncode=3,
            )
