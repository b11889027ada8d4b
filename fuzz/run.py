"""Schema-driven fuzzing of the served API: no request, however malformed, may answer 5xx.

    .venv/bin/python fuzz/run.py [--roles provider,lab,both] [--keep-databases] [-- SCHEMATHESIS OPTIONS]

(or ``make fuzz``, with ``FUZZ_ARGS`` for these arguments).

1. A fresh database ``fuzz_<name>`` on DATABASE_URL's server (``fuzz_gpubroker`` on the
   embedded server when DATABASE_URL is unset), migrated, with the demo market of
   ``backoffice.demo``: clusters, listings, open and filled requests, contracts, usage, a
   closed month with its invoice and payout; and an API key for each of three of its
   organizations: a provider, a lab, and one with both roles.
2. For each of the three, a copy of that database (``fuzz_<name>_<role>``), served as in
   production: gunicorn on a free port of 127.0.0.1 with the production settings (DEBUG off, a
   SECRET_KEY of its own) but plain HTTP and no rate limits, and a Celery worker beside it
   that runs the tasks the API queues (matching, above all) through Redis. Each role has a
   Redis database of its own on REDIS_URL's server (``FUZZ_REDIS_DATABASES``). Without
   REDIS_URL, tasks run in the server's process instead, and the run says so.
3. schemathesis reads each served schema (/api/v1/schema/) and tests every operation in it,
   with valid and invalid inputs, in all its phases (examples, coverage, fuzzing, stateful),
   as that organization. The checks and the generation are in fuzz/schemathesis.toml.

Each organization has a market of its own and each client sends one request at a time, with
deterministic generation: a run sends the same requests, in the same order, as the last one,
so the three run side by side. Exits 1 if any check failed (a 5xx, above all) or a task
failed in a worker, after printing each failure with a curl command that reproduces it, and
the server's and the worker's tracebacks. The databases are dropped at
the end unless ``--keep-databases``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from marketplace.services import IssuedApiKey

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMA_PATH = "/api/v1/schema/"
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"  # the checks, the phases, the generation

# The demo organizations (backoffice.demo) the fuzzer acts as, by role.
ROLES = {"provider": "Colossus Compute", "lab": "Frontier Lab", "both": "Orbital AI"}

# The inputs that name things of the market, or must fall on its hours, are drawn half the
# time from what the seeded market holds: otherwise almost every create, booking and search
# stops at validation (an unknown GPU model or cluster, a time not on a future whole hour) and
# the code behind it is never reached. The other half stay free, valid or not.
MARKET_PARAMETERS = {
    # parameter: (its locations, the dictionary it draws from)
    "gpu_model": (("body", "query"), "gpu_models"),
    "slug": (("path",), "gpu_models"),  # the market's book, trades and index, and the catalog
    "cluster": (("body", "query"), "clusters"),
    "starts_at": (("body", "query"), "hours"),
    "ends_at": (("body", "query"), "hours"),
    "price_per_gpu_hour": (("body",), "prices"),
    "max_price_per_gpu_hour": (("body",), "prices"),
    "max_price": (("query",), "prices"),
    "gpu_count": (("body",), "counts"),
    "node_count": (("body",), "counts"),
    "count": (("body",), "counts"),
    "duration_hours": (("body",), "counts"),
    "min_duration_hours": (("body",), "counts"),
    "min_gpus": (("query",), "counts"),
}
PRICES = ["0.01", "1.05", "2.10", "2.45", "4.20", "1000.00"]
COUNTS = [1, 2, 8, 16, 24, 64, 256, 2048]
HOUR_OFFSETS = (0, 1, 2, 4, 22, 24, 48, 72, 168, 336)  # from two hours on, so none is past before the run ends
# Each role's Celery broker: this Redis database on REDIS_URL's server (flushed at the start).
FUZZ_REDIS_DATABASES = {"provider": 7, "lab": 8, "both": 9}

_started = time.monotonic()


def log(message: str) -> None:
    print(f"[fuzz {time.monotonic() - _started:6.1f}s] {message}", flush=True)


def database_named(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{quote(name)}", parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def fuzz_database_url() -> str:
    """``fuzz_<name>`` on DATABASE_URL's server, or ``fuzz_gpubroker`` on the embedded one
    (started here when it is not running, and stopped when this process exits)."""
    url = os.environ.get("DATABASE_URL", "")
    if url:
        return database_named(url, f"fuzz_{database_name(url) or 'gpubroker'}")
    from core.local_postgres import database_url, ensure_server

    return database_url(ensure_server(ROOT / "var" / "postgres", "fuzz_gpubroker"))


def create_database(url: str, *, template: str | None = None) -> None:
    """Create the URL's database afresh (a copy of ``template`` if given)."""
    import psycopg
    from psycopg import sql

    drop_database(url)
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database_name(url)))
    if template:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(database_named(url, "postgres"), autocommit=True) as conn:
        conn.execute(statement)


def drop_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_named(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database_name(url))))


def server_environment(database_url: str, secret_key: str, redis_url: str = "") -> dict[str, str]:
    """The production settings, but plain HTTP on loopback and no rate limits; tasks go to a
    worker through ``redis_url``, or run in-process without one."""
    env = {name: value for name, value in os.environ.items() if name not in ("REDIS_URL", "CELERY_TASK_ALWAYS_EAGER")}
    tasks = {"REDIS_URL": redis_url} if redis_url else {"CELERY_TASK_ALWAYS_EAGER": "true"}
    return (
        env
        | tasks
        | {
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DEBUG": "false",
            "SECRET_KEY": secret_key,
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "API_RATE_LIMIT": "none",
            "API_AUTH_FAILURE_RATE_LIMIT": "none",
            "LOG_LEVEL": "WARNING",
            "PYTHONWARNINGS": "ignore:No directory at",  # no collectstatic: nothing static is fuzzed
        }
    )


def prepare_market(env: dict[str, str]) -> tuple[dict[str, IssuedApiKey], str]:
    """Migrate, seed the demo market and issue a key per role, in this process. Return the keys
    by role, and the dictionaries of the market's values as schemathesis configuration."""
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from backoffice.demo import seed_demo_market
    from marketplace.models import Organization
    from marketplace.services import api_key_create

    call_command("migrate", verbosity=0, interactive=False)
    seed_demo_market()
    keys = {
        role: api_key_create(organization=Organization.objects.get(name=name), name="fuzz")
        for role, name in ROLES.items()
    }
    dictionaries = market_dictionaries()
    connection.close()  # the database is copied next: nobody may be connected to it
    return keys, dictionaries


def market_dictionaries() -> str:
    """The ``[dictionaries]`` of the seeded market and the ``[parameters]`` they feed, as TOML."""
    from core.timeutils import HOUR, current_hour
    from marketplace.models import Cluster, GpuModel

    start = current_hour() + 2 * HOUR
    values = {
        "gpu_models": sorted(GpuModel.objects.values_list("slug", flat=True)),
        "clusters": sorted(Cluster.objects.values_list("pk", flat=True)),
        "hours": [f"{start + offset * HOUR:%Y-%m-%dT%H:%M:%SZ}" for offset in HOUR_OFFSETS],
        "prices": PRICES,
        "counts": COUNTS,
    }
    lines = ["", "# Added by fuzz/run.py: the seeded market's values."]
    for name, entries in values.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(entries)}"]
    lines.append("[parameters]")
    for name, (locations, dictionary) in MARKET_PARAMETERS.items():
        lines += [f'"{where}.{name}" = {{ dictionary = "{dictionary}", probability = 0.5 }}' for where in locations]
    return "\n".join(lines) + "\n"


def role_redis_url(role: str) -> str:
    """The role's own Redis database on REDIS_URL's server, emptied; "" without REDIS_URL."""
    url = os.environ.get("REDIS_URL", "")
    if not url:
        return ""
    import redis

    parts = urlsplit(url)
    role_url = urlunsplit((parts.scheme, parts.netloc, f"/{FUZZ_REDIS_DATABASES[role]}", "", ""))
    redis.Redis.from_url(role_url, socket_connect_timeout=5).flushdb()
    return role_url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Run:
    """One organization's fuzzing: its database, its server and its schemathesis client."""

    role: str
    key: IssuedApiKey
    database_url: str
    work_dir: Path
    port: int = 0
    server: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    client: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_log(self) -> Path:
        return self.work_dir / f"server-{self.role}.log"

    @property
    def worker_log(self) -> Path:
        return self.work_dir / f"worker-{self.role}.log"

    @property
    def client_log(self) -> Path:
        return self.work_dir / f"schemathesis-{self.role}.log"

    def serve(self, env: dict[str, str]) -> None:
        """gunicorn on a free port, one worker: its client sends one request at a time."""
        self.port = free_port()
        with open(self.server_log, "wb") as output:
            self.server = subprocess.Popen(
                [str(BIN / "gunicorn"), "config.wsgi", "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
                 "--timeout", "60", "--graceful-timeout", "5", "--no-control-socket"],
                cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if env.get("REDIS_URL"):
            with open(self.worker_log, "wb") as output:
                self.worker = subprocess.Popen(
                    [str(BIN / "celery"), "-A", "config", "worker", "--concurrency", "1", "--pool", "solo",
                     "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                )  # fmt: skip

    def wait_until_served(self, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}{SCHEMA_PATH}", timeout=30) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or still building the schema on a busy machine
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not serve the schema:\n{self.server_log.read_text()[-3000:]}")
            time.sleep(0.3)

    def start_client(self, config: Path, options: list[str]) -> None:
        command = [str(BIN / "schemathesis"), "--config-file", str(config), "--no-color", "run",
                   f"{self.base_url}{SCHEMA_PATH}", *options]  # fmt: skip
        # The key goes in the environment, not on a command line that others can read.
        env = os.environ | {"FUZZ_API_KEY": self.key.secret, "FUZZ_API_KEY_ID": str(self.key.api_key.pk)}
        with open(self.client_log, "wb") as output:
            self.client = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for process in (self.client, self.server, self.worker):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def report(self) -> bool:
        """Print the client's report (and the server's and the worker's tracebacks); True if it
        passed and no task failed."""
        print(f"\n{'=' * 30} as the {self.role} ({ROLES[self.role]}) {'=' * 30}\n", flush=True)
        print(self.client_log.read_text(errors="replace"), flush=True)
        worker_log = self.worker_log.read_text(errors="replace") if self.worker else ""
        tasks_failed = "Traceback" in worker_log
        passed = self.client.returncode == 0 and not tasks_failed
        server_log = self.server_log.read_text(errors="replace")
        if not passed and "Traceback" in server_log:
            print(f"== the server's tracebacks, as the {self.role}\n{server_log[server_log.find('Traceback') :]}")
        if tasks_failed:
            print(f"== tasks failed in the worker, as the {self.role}\n{worker_log[worker_log.find('Traceback') :]}")
        return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", default=",".join(ROLES), help="the organizations to act as, comma-separated")
    parser.add_argument("--keep-databases", action="store_true", help="leave the databases for inspection")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="after --: more options of `schemathesis run`")
    args = parser.parse_args()
    options = args.options[1:] if args.options[:1] == ["--"] else args.options
    roles = [role for role in ROLES if role in args.roles.split(",")]
    sys.path.insert(0, str(ROOT))  # the project's modules: this script runs from fuzz/

    market_url = fuzz_database_url()
    log(f"fresh database {database_name(market_url)}: migrate, seed the demo market, issue keys")
    create_database(market_url)
    secret_key = secrets.token_urlsafe(50)
    keys, dictionaries = prepare_market(server_environment(market_url, secret_key))

    work_dir = Path(tempfile.mkdtemp(prefix="fuzz-"))
    config = work_dir / "schemathesis.toml"
    config.write_text(CONFIG.read_text() + dictionaries)
    runs = [
        Run(role, keys[role], database_named(market_url, f"{database_name(market_url)}_{role}"), work_dir)
        for role in roles
    ]
    try:
        for run in runs:
            create_database(run.database_url, template=database_name(market_url))
            run.serve(server_environment(run.database_url, secret_key, role_redis_url(run.role)))
        deadline = time.monotonic() + 180
        for run in runs:
            run.wait_until_served(deadline)
        tasks = "a Celery worker beside each" if runs and runs[0].worker else "tasks in-process (no REDIS_URL)"
        log(f"serving a copy of the market to each of: {', '.join(roles)} ({tasks}); schemathesis runs as each")
        for run in runs:
            run.start_client(config, options)
        for run in runs:
            run.client.wait()
            log(f"done as the {run.role}")
    finally:
        for run in runs:
            run.stop()
    failed = [run.role for run in runs if not run.report()]
    databases = [run.database_url for run in runs] + [market_url]
    if args.keep_databases:
        log("kept the databases: " + ", ".join(database_name(url) for url in databases))
    else:
        for url in databases:
            drop_database(url)
    shutil.rmtree(work_dir, ignore_errors=True)
    if failed:
        log(f"FAILED as the {', '.join(failed)}: see the failures and their curl reproductions above")
        return 1
    log(f"passed as the {', '.join(roles)}: every check held, no task failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
