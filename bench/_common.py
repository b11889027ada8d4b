"""What every benchmark script needs: Django on a local PostgreSQL bench database, a clean
slate, logging to stderr, the machine it ran on, and one JSON line of figures on stdout.

A script calls ``setup(default_database=...)`` before importing models. Worker processes
started by a script call ``setup(..., prepare=False)``: the parent already created and
migrated the database.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_started = time.monotonic()


def log(message: str) -> None:
    """Progress for humans, on stderr; stdout carries only the JSON line."""
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


def database_url(default_database: str) -> str:
    """DATABASE_URL, or a local server's database named ``default_database``. Local only."""
    url = os.environ.get("DATABASE_URL") or f"postgres://postgres@127.0.0.1:5432/{default_database}"
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise SystemExit(f"benchmarks need PostgreSQL; DATABASE_URL is {parts.scheme}://...")
    if parts.hostname not in LOCAL_HOSTS:
        raise SystemExit(f"benchmarks run against a local server only, not {parts.hostname}")
    return url


def server_url(url: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def create_database(url: str) -> None:
    """Create the URL's database through the ``postgres`` maintenance database if it is missing."""
    import psycopg
    from psycopg import sql

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url(url, "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            log(f"creating database {name}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup(*, default_database: str, prepare: bool = True, apps: tuple[str, ...] = ()) -> str:
    """Configure the environment, django.setup(), and with ``prepare`` create and migrate the database.

    ``apps`` limits the migration to those apps (and what they depend on), so a benchmark
    does not depend on unrelated apps' migrations; empty means all.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    url = database_url(default_database)
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    # Tasks never leave the process; data set-up avoids enqueueing them at all.
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "true"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Measured as production runs: DEBUG off (no per-query logging). The benchmark's own
    # secret and plain HTTP on loopback are the only differences from the production shape.
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(48))
    os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
    if prepare:
        create_database(url)
    import django

    django.setup()
    if prepare:
        from django.core.management import call_command

        for app in apps or [None]:
            call_command("migrate", *([app] if app else []), verbosity=0, interactive=False)
    return url


MARKET_TABLES = [
    # derived from allocations and listing nodes, with no foreign keys: CASCADE would not reach it
    "broker_freespan",
    "broker_allocation",
    "broker_contract",
    "broker_computerequest",
    "marketplace_listingnode",
    "marketplace_listing",
    "marketplace_node",
    "marketplace_cluster",
    "marketplace_organization",
]


def truncate(tables: list[str] = MARKET_TABLES) -> None:
    """Empty these tables (and whatever references them). The GPU catalog stays."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def analyze(*, vacuum: tuple[str, ...] = ()) -> None:
    """Fresh planner statistics after a bulk load, as autovacuum would give a live system.

    ``vacuum``: tables to VACUUM as well, as autovacuum also does to tables that only grew
    (PostgreSQL 13 and later); it sets the visibility map that index-only scans rely on.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        if vacuum:
            cursor.execute(f"VACUUM (ANALYZE) {', '.join(vacuum)}")
        cursor.execute("ANALYZE")


def machine() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": postgres,
        "platform": platform.platform(),
        # The machine may be shared: other work running now skews absolute figures.
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) used so far by a local process, e.g. a PostgreSQL backend."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pid() -> int:
    """The PostgreSQL server process serving this Django connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@contextmanager
def cpu_meter(server_pid: int | None = None):
    """``with cpu_meter(backend_pid()) as cpu: ...`` then ``cpu["client"]`` and ``cpu["server"]``.

    CPU seconds used inside the block by this process and by a local PostgreSQL backend
    (None when its /proc entry cannot be read). On a shared machine these are steadier than
    wall-clock time.
    """
    figures: dict[str, float | None] = {"client": None, "server": None}
    server_start = process_cpu_seconds(server_pid) if server_pid else None
    client_start = time.process_time()
    try:
        yield figures
    finally:
        figures["client"] = time.process_time() - client_start
        server_end = process_cpu_seconds(server_pid) if server_pid else None
        if server_start is not None and server_end is not None:
            figures["server"] = server_end - server_start


def print_profile(profiler, title: str, limit: int = 30) -> None:
    """A cProfile's top functions by own time and by cumulative time, on stderr."""
    import io
    import pstats

    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort).print_stats(limit)
        print(f"--- {title}: top {limit} by {sort} ---\n{out.getvalue()}", file=sys.stderr)


@contextmanager
def stopwatch():
    """``with stopwatch() as elapsed: ...`` then ``elapsed()`` gives the seconds, frozen at exit."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end if end is not None else time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


# --- pgbench: the reference figure measured on the same server in the same run -------------

PGBENCH_DATABASE = "gpubroker_pgbench"
# PostgreSQL 14+ says "without initial connection time"; older ones "excluding connections establishing".
PGBENCH_TPS = re.compile(r"tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)")


def pgbench_binary() -> str:
    found = shutil.which("pgbench") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))), None)
    if not found:
        raise SystemExit("pgbench not found: install the postgresql client package")
    return found


def _pgbench_command(url: str, *args: str, database: str = PGBENCH_DATABASE) -> tuple[list[str], dict]:
    parts = urlsplit(url)
    env = {**os.environ}
    if parts.password:
        env["PGPASSWORD"] = parts.password
    command = [pgbench_binary(), "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    if parts.username:
        command += ["-U", parts.username]
    return [*command, *args, database], env


def pgbench_init(url: str, *, scale: int = 16, database: str = PGBENCH_DATABASE) -> None:
    """(Re)initialise the TPC-B-like tables in their own database on the bench server."""
    create_database(server_url(url, database))
    command, env = _pgbench_command(url, "-i", "-q", "-s", str(scale), database=database)
    log(f"pgbench -i -s {scale}")
    subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=600)


def pgbench_tps(
    url: str, *, clients: int = 16, threads: int = 2, seconds: int = 10, database: str = PGBENCH_DATABASE
) -> float:
    """pgbench's built-in TPC-B-like run; transactions per second without connection time."""
    command, env = _pgbench_command(
        url, "-c", str(clients), "-j", str(threads), "-T", str(seconds), database=database
    )
    log(f"pgbench -c {clients} -j {threads} -T {seconds}")
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=seconds + 120)
    match = PGBENCH_TPS.search(done.stdout)
    if not match:
        raise RuntimeError(f"no tps in pgbench output:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1))


def emit(figures: dict) -> None:
    """The one line on stdout, with the machine it ran on."""
    print(json.dumps({**figures, "machine": machine()}, default=str), flush=True)
