"""The API as production serves it, under load: gunicorn and a real Celery worker, driven by wrk.

Builds its market in its own database (``bench_http``): a provider with one listing of 12,500
nodes (8 H100 each) in one cluster and 500 listings of 4 nodes on 125 other clusters, all
for 30 days from the next whole hour; metered contracts running since the start of last
month (usage is reported for them); 16 labs with no credit limit, each with an API key.
Serves it as README's "Production shape" does: gunicorn (``--workers``; DEBUG off, no rate
limits) and a Celery worker (concurrency 1) on Redis db 11, both on that database; a compute
request filled by the worker shows it is live. Then wrk (2 threads, 16 connections; its
Lua scripts are in bench/wrk/) drives each of these for ``--seconds`` in all, after a
``--warmup``, in ``--rounds`` runs taken in turn, the order reversed every other round
(get, search, ..., usage, usage, ..., search, get), so that a change in the machine's load
weighs alike on the two figures of each ratio:

- ``get``: GET /api/v1/organization, the cheapest authenticated call, the reference;
- ``search``: GET /api/v1/listings for a window and ``min_gpus`` from a small set;
- ``book_big``: POST /api/v1/listings/{id}/book on the 12,500-node listing, one node
  (8 GPUs) for 1 to 8 hours from a random hour of its window;
- ``book_spread``: the same over the 500 small listings, one at random per request;
- ``usage``: POST /api/v1/usage, batches of ``--usage-batch`` new records (one per node-hour).

pgbench's TPC-B-like run (16 clients, 2 threads, database ``bench_http_pgbench``) runs before
the servers start and after they stop, on the same PostgreSQL; its reference is the mean.

    .venv/bin/python bench/http_load.py [--workers 4] [--threads 1] [--seconds 10] [--rounds 2] [--profile]

Each measurement reports requests/s, latency percentiles (from wrk's histograms, merged over
the rounds), the statuses, and the CPU milliseconds per request of gunicorn, of its
PostgreSQL sessions and of wrk: on a shared machine those are steadier than the rates
(waiting for a core costs no CPU time).

Prints one JSON line. Targets, as ratios within the run: booking spread >= 0.25 x pgbench's
tps; booking the 12,500-node listing >= 0.90 x booking spread; search >= 0.50 x the GET.
Exits 0 whether or not they are met, and 1 when the run broke (``ok`` false): a 5xx or
another unexpected status, a socket error or timeout, a rejected or duplicate usage record,
a node sold twice, a server that did not start. ``--profile`` then sends each kind of request
in this process under cProfile (top functions on stderr) and reports its Python and
PostgreSQL CPU per request.

Named http_load, not http: a bench/http.py would shadow the standard library's ``http``
package for every script in bench/ (a script's folder comes first on sys.path).
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import math
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import reduce
from pathlib import Path

from _common import (
    MARKET_TABLES,
    ROOT,
    analyze,
    backend_pid,
    database_url,
    emit,
    log,
    pgbench_init,
    pgbench_tps,
    print_profile,
    process_cpu_seconds,
    server_url,
    setup,
    stopwatch,
    truncate,
)

DATABASE = "bench_http"
PGBENCH_DATABASE = "bench_http_pgbench"
REDIS_URL = "redis://127.0.0.1:6379/11"
WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"
GUNICORN_CONFIG = ROOT / "config" / "gunicorn.conf.py"  # used when present (Prometheus multiprocess metrics)
MIGRATE_APPS = ("core", "marketplace", "events", "broker", "billing")

TARGETS = {
    "book_spread_over_pgbench": 0.25,
    "book_big_over_book_spread": 0.90,
    "search_over_get": 0.50,
}
GPU_MODEL = "h100-sxm-80gb"
GPUS_PER_NODE = 8
WINDOW_HOURS = 30 * 24
BIG_NODES = 12_500
SMALL_LISTINGS = 500
SMALL_NODES = 4  # per listing
SMALL_LISTINGS_PER_CLUSTER = 4
LABS = 16
BOOKING_HOURS = (1, 8)
SEARCH_GPUS = [8, 16, 32, 64, 256]
SEARCH_HOURS = [4, 24, 72, 168]
SEARCHES = 40
USAGE_NODES = 8  # per usage contract
# Usage contracts are sized for this rate, so no node-hour is reported twice in a run.
USAGE_RECORDS_PER_SECOND_CEILING = 60_000
# The servers' settings the JSON line shows (the secrets stay out).
SHOWN_SETTINGS = (
    "DEBUG",
    "SECURE_SSL_REDIRECT",
    "ALLOWED_HOSTS",
    "API_RATE_LIMIT",
    "API_AUTH_FAILURE_RATE_LIMIT",
    "REDIS_URL",
    "CELERY_TASK_ALWAYS_EAGER",
    "LOG_FORMAT",
)
# The order of the measurements (reversed every other round): each ratio's two are neighbours.
ORDER = ["get", "search", "book_spread", "book_big", "usage"]
EXPECTED_STATUSES = {
    "get": {200},
    "search": {200},
    "book_big": {201, 409},
    "book_spread": {201, 409},
    "usage": {200},
}


class RunBroken(Exception):
    """The run itself failed: a server did not start, a tool failed."""


# --- The market ----------------------------------------------------------------------------


def build_market(rng: random.Random, *, usage_contracts: int, labs: int) -> dict:
    """Organizations with API keys through the services; clusters through the service;
    listings, reserved nodes, usage contracts and their allocations in bulk."""
    from broker.models import Allocation, Contract
    from core.timeutils import month_of, next_hour, previous_month
    from marketplace.models import GpuModel, Listing, ListingNode, Node, Organization
    from marketplace.services import cluster_create, organization_create

    base = next_hour()
    ends_at = base + timedelta(hours=WINDOW_HOURS)
    this_month = month_of(base)
    last_month = previous_month(this_month)
    usage_from = datetime(last_month.year, last_month.month, 1, tzinfo=UTC)
    usage_until = datetime(this_month.year, this_month.month, 1, tzinfo=UTC)
    h100 = GpuModel.objects.get(slug=GPU_MODEL)

    provider, provider_key = organization_create(name="Bench http provider", role="provider")
    lab_keys = []
    for index in range(labs):
        _, issued = organization_create(name=f"Bench http lab {index:02d}", role="lab")
        lab_keys.append(issued.secret)
    Organization.objects.filter(is_lab=True).update(credit_limit=None)
    lab_ids = list(Organization.objects.filter(is_lab=True).order_by("id").values_list("id", flat=True))

    def cluster(name: str, nodes: int):
        return cluster_create(
            provider=provider,
            name=name,
            gpu_model=h100,
            region="us-south-1",
            interconnect="infiniband",
            gpus_per_node=GPUS_PER_NODE,
            node_count=nodes,
        )

    big_cluster = cluster("bench-http-big", BIG_NODES)
    small_clusters = [
        cluster(f"bench-http-small-{index:03d}", SMALL_NODES * SMALL_LISTINGS_PER_CLUSTER)
        for index in range(SMALL_LISTINGS // SMALL_LISTINGS_PER_CLUSTER)
    ]
    usage_cluster = cluster("bench-http-usage", usage_contracts * USAGE_NODES)
    nodes: dict[int, list[tuple[int, str]]] = {}
    for cluster_id, node_id, hostname in Node.objects.order_by("id").values_list("cluster_id", "id", "hostname"):
        nodes.setdefault(cluster_id, []).append((node_id, hostname))

    listings: list[Listing] = []
    reserved: list[list[tuple[int, str]]] = []

    def offer(cluster_id: int, node_slice, *, starts_at, until, price: str, mode: str) -> Listing:
        listing = Listing(
            provider=provider,
            cluster_id=cluster_id,
            node_count=len(node_slice),
            starts_at=starts_at,
            ends_at=until,
            price_per_gpu_hour=Decimal(price),
            billing_mode=mode,
        )
        listings.append(listing)
        reserved.append(node_slice)
        return listing

    big = offer(big_cluster.pk, nodes[big_cluster.pk], starts_at=base, until=ends_at, price="2.10", mode="committed")
    small = []
    for small_cluster in small_clusters:
        for index in range(SMALL_LISTINGS_PER_CLUSTER):
            small.append(
                offer(
                    small_cluster.pk,
                    nodes[small_cluster.pk][index * SMALL_NODES : (index + 1) * SMALL_NODES],
                    starts_at=base,
                    until=ends_at,
                    price=f"{rng.uniform(1.85, 2.75):.2f}",
                    mode=rng.choice(["committed", "metered"]),
                )
            )
    usage_nodes = nodes[usage_cluster.pk]
    usage_slices = [usage_nodes[index * USAGE_NODES : (index + 1) * USAGE_NODES] for index in range(usage_contracts)]
    usage_listings = [
        offer(
            usage_cluster.pk,
            node_slice,
            starts_at=usage_from,
            until=usage_until + timedelta(days=31),
            price="2.00",
            mode="metered",
        )
        for node_slice in usage_slices
    ]
    Listing.objects.bulk_create(listings, batch_size=1000)
    listing_nodes = ListingNode.objects.bulk_create(
        (
            ListingNode(listing=listing, node_id=node_id, starts_at=listing.starts_at, ends_at=listing.ends_at)
            for listing, listed in zip(listings, reserved, strict=True)
            for node_id, _ in listed
        ),
        batch_size=5000,
    )
    listing_node_of = {(row.listing_id, row.node_id): row.pk for row in listing_nodes}

    # Metered contracts that hold every node of their usage listing, running since last month.
    contracts = Contract.objects.bulk_create(
        Contract(
            listing=listing,
            lab_id=lab_ids[index % len(lab_ids)],
            provider=provider,
            cluster_id=listing.cluster_id,
            gpu_count=USAGE_NODES * GPUS_PER_NODE,
            node_count=USAGE_NODES,
            starts_at=listing.starts_at,
            ends_at=listing.ends_at,
            price_per_gpu_hour=listing.price_per_gpu_hour,
            billing_mode="metered",
            status="active",
        )
        for index, listing in enumerate(usage_listings)
    )
    Allocation.objects.bulk_create(
        (
            Allocation(
                contract=contract,
                listing_node_id=listing_node_of[(contract.listing_id, node_id)],
                node_id=node_id,
                listing_id=contract.listing_id,
                starts_at=contract.starts_at,
                ends_at=contract.ends_at,
            )
            for contract, node_slice in zip(contracts, usage_slices, strict=True)
            for node_id, _ in node_slice
        ),
        batch_size=5000,
    )
    return {
        "base": base,
        "provider_key": provider_key.secret,
        "lab_keys": lab_keys,
        "big_listing": big.pk,
        "small_listings": [listing.pk for listing in small],
        # contract id -> its nodes' hostnames
        "usage_contracts": {
            contract.pk: [hostname for _, hostname in node_slice]
            for contract, node_slice in zip(contracts, usage_slices, strict=True)
        },
        "usage_month": (usage_from, int((usage_until - usage_from) / timedelta(hours=1))),
        "nodes": sum(len(listed) for listed in nodes.values()),
    }


def usage_contracts_needed(*, seconds: float, batch: int) -> int:
    """Enough usage contracts that every batch of the run reports node-hours not yet reported."""
    hours = 28 * 24  # the shortest month
    blocks_per_contract = hours // (batch // USAGE_NODES)
    batches = USAGE_RECORDS_PER_SECOND_CEILING * seconds / batch
    return max(32, math.ceil(batches / blocks_per_contract))


# --- Processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(url: str) -> dict:
    """README's production shape, on this machine: DEBUG off, plain HTTP on loopback, no rate
    limits, JSON logs, Redis db 11."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"CELERY_TASK_ALWAYS_EAGER", "LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR"}
    }
    env.update(
        DATABASE_URL=url,
        REDIS_URL=REDIS_URL,
        DEBUG="false",
        SECRET_KEY=os.environ["SECRET_KEY"],  # _common.setup drew 64 random characters
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS="127.0.0.1",
        API_RATE_LIMIT="none",
        API_AUTH_FAILURE_RATE_LIMIT="none",
        CELERY_TASK_ALWAYS_EAGER="false",
        LOG_FORMAT="json",
        METRICS_TOKEN=secrets.token_urlsafe(36),
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    return env


@contextmanager
def process_group(name: str, command: list[str], *, env: dict, log_path: Path):
    """A server in a process group of its own, its output in ``log_path``; the whole group is
    stopped on exit (SIGTERM, then SIGKILL for what is left after 30 s)."""
    with open(log_path, "wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    log(f"{name}: started, pid {process.pid}")
    try:
        yield process
    finally:
        _stop_group(name, process)


def _stop_group(name: str, process: subprocess.Popen) -> None:
    group = process.pid  # the leader's pid, as start_new_session made it
    if process.poll() is None:
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 30
    # Wait for the leader without reaping it: while it is a zombie its pid (the group's id)
    # cannot be reused, so the SIGKILL below reaches only what is left of this group.
    while time.monotonic() < deadline:
        state = os.waitid(os.P_PID, group, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if state is not None:
            break
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait(timeout=10)
    log(f"{name}: stopped")


def log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def http_request(port: int, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, dict | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        payload = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            payload = json.dumps(body)
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        content = response.read()
        try:
            return response.status, json.loads(content)
        except ValueError:
            return response.status, None
    finally:
        conn.close()


def wait_for_gunicorn(process: subprocess.Popen, port: int, key: str, log_path: Path, timeout: float = 60) -> float:
    with stopwatch() as elapsed:
        while True:
            if process.poll() is not None:
                raise RunBroken(f"gunicorn exited with {process.returncode}:\n{log_tail(log_path)}")
            try:
                status, body = http_request(port, "GET", "/api/v1/organization", key)
                if status == 200:
                    break
                raise RunBroken(f"gunicorn answered {status} to GET /api/v1/organization: {body}")
            except OSError:
                if elapsed() > timeout:
                    raise RunBroken(f"gunicorn did not answer within {timeout:g} s:\n{log_tail(log_path)}")
                time.sleep(0.2)
    return elapsed()


def wait_for_celery(process: subprocess.Popen, name: str, log_path: Path, timeout: float = 60) -> float:
    from config.celery import app

    with stopwatch() as elapsed:
        while True:
            if process.poll() is not None:
                raise RunBroken(f"the Celery worker exited with {process.returncode}:\n{log_tail(log_path)}")
            replies = app.control.ping(timeout=1.0)
            if any(name in reply for reply in replies):
                break
            if elapsed() > timeout:
                raise RunBroken(f"the Celery worker did not answer a ping within {timeout:g} s:\n{log_tail(log_path)}")
    return elapsed()


def celery_smoke(port: int, key: str, starts_at: datetime, timeout: float = 60) -> float:
    """A compute request, filled by the worker (the API only queues its matching)."""
    status, body = http_request(
        port,
        "POST",
        "/api/v1/compute-requests",
        key,
        {
            "gpu_model": GPU_MODEL,
            "gpu_count": GPUS_PER_NODE,
            "starts_at": f"{starts_at:%Y-%m-%dT%H:%M:%SZ}",
            "duration_hours": 1,
            "max_price_per_gpu_hour": "5.00",
            "billing_mode": "committed",
        },
    )
    if status != 201:
        raise RunBroken(f"POST /api/v1/compute-requests answered {status}: {body}")
    with stopwatch() as elapsed:
        while elapsed() < timeout:
            status, body = http_request(port, "GET", f"/api/v1/compute-requests/{body['id']}", key)
            if status == 200 and body["status"] == "filled":
                return elapsed()
            time.sleep(0.2)
    raise RunBroken(f"the Celery worker did not fill a compute request within {timeout:g} s: {body}")


# --- wrk -----------------------------------------------------------------------------------


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is not installed: install the Debian package (apt-get install -y wrk), or run as root")
    log("installing wrk (apt-get install -y wrk)")
    for command in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if command[1] == "install" and done.returncode == 0:
            break
    found = shutil.which("wrk")
    if not found:
        raise SystemExit(f"apt-get could not install wrk:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return found


def write_data(path: Path, items: list[tuple]) -> Path:
    """The Lua scripts' data file: one item a line, its name then its values."""
    path.write_text("".join(" ".join(str(value) for value in item) + "\n" for item in items))
    return path


def run_wrk(wrk: str, script: str, data: Path, *, port: int, seconds: float, connections: int, threads: int) -> dict:
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout=30s",
        "-s",
        str(WRK_SCRIPTS / script),
        f"http://127.0.0.1:{port}",
        "--",
        str(data),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90)
    except subprocess.TimeoutExpired:
        raise RunBroken(f"wrk did not finish within {seconds + 90:g} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RunBroken(f"wrk failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def percentiles_ms(runs: list[dict], shares: dict[str, float]) -> dict[str, float]:
    """Latency percentiles of several wrk runs together. Each run gives its latency at a
    ladder of percentiles; a value stands for the run's requests between the rung below and
    its own."""
    points = []
    for run in runs:
        below = 0.0
        for percent, value in run["latency_quantiles_us"]:
            points.append((value, run["requests"] * (percent - below) / 100))
            below = percent
    points.sort()
    total = sum(weight for _, weight in points)
    out = {}
    for name, share in shares.items():
        seen = 0.0
        for value, weight in points:
            seen += weight
            if seen >= share * total - 1e-9:
                out[name] = round(value / 1000, 1)
                break
    return out


def added(first: dict, second: dict) -> dict:
    return {key: first.get(key, 0) + second.get(key, 0) for key in first.keys() | second.keys()}


# --- Checks in the database ----------------------------------------------------------------


def contracts_count(listing_ids: list[int]) -> int:
    from broker.models import Contract

    return Contract.objects.filter(listing_id__in=listing_ids).count()


def usage_count() -> int:
    from billing.models import UsageRecord

    return UsageRecord.objects.count()


def open_connections(port: int) -> int:
    """Connections to the port that the server has not closed yet (/proc/net/tcp*): queued,
    being served, or waiting in a worker for a thread."""
    # SYN_RECV, ESTABLISHED and CLOSE_WAIT (the client left first); a closed one is in
    # LAST_ACK, TIME_WAIT or FIN_WAIT, and a LISTEN socket counts its accept queue.
    open_states = {"03", "01", "08"}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) != port:
                    continue
                if fields[3] in open_states:
                    count += 1
                elif fields[3] == "0A":
                    count += int(fields[4].split(":")[1], 16)
    return count


def settle(port: int, timeout: float = 60) -> float:
    """Wait until gunicorn holds no connection and no session works in this database (three
    looks 0.1 s apart). When wrk stops, gunicorn still serves the requests it had been sent
    (up to one per connection); the next measurement, and the counts, wait for them."""
    from django.db import connection

    quiet = 0
    with stopwatch() as elapsed, connection.cursor() as cursor:
        while quiet < 3 and elapsed() < timeout:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state NOT IN ('idle', 'idle in transaction')"
            )
            busy = cursor.fetchone()[0] + open_connections(port)
            quiet = quiet + 1 if busy == 0 else 0
            time.sleep(0.1)
    return elapsed()


class CpuSampler(threading.Thread):
    """CPU seconds used during a run by gunicorn's processes and by the other PostgreSQL
    sessions of this database, read from /proc every 0.2 s. A process that exits meanwhile
    (a session closed at CONN_MAX_AGE, say) counts up to its last reading."""

    def __init__(self, gunicorn_group: int):
        super().__init__(daemon=True)
        self.group, self.own_session = gunicorn_group, backend_pid()
        self.first = self._read()
        self.last = dict(self.first)
        self.stopped = threading.Event()

    def _read(self) -> dict[tuple[str, int], float]:
        readings = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.own_session:
                continue
            with suppress(OSError, ValueError):
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
                fields = tail.split()
                if int(fields[2]) == self.group:
                    kind = "gunicorn"
                elif head.endswith("(postgres") and f" {DATABASE} ".encode() in (entry / "cmdline").read_bytes():
                    kind = "postgres"  # "postgres: user database host(port) state"
                else:
                    continue
                readings[(kind, int(entry.name))] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return readings

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.last.update(self._read())

    def stop(self) -> dict[str, float]:
        """Stop sampling; the CPU seconds of each kind since the sampler was made."""
        self.stopped.set()
        self.join(timeout=5)
        self.last.update(self._read())
        spent = {"gunicorn": 0.0, "postgres": 0.0}
        for (kind, pid), seconds in self.last.items():
            spent[kind] += seconds - self.first.get((kind, pid), 0.0)  # a newer process: all of its time
        return spent


def children_cpu_seconds() -> float:
    """CPU time of this process's ended children (wrk, once it is waited for)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def nodes_sold_twice() -> int:
    """Allocations of a node that overlap in time (the exclusion constraint forbids them)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT count(*) FROM broker_allocation a JOIN broker_allocation b
               ON a.node_id = b.node_id AND a.id < b.id
              AND tstzrange(a.starts_at, a.ends_at, '[)') && tstzrange(b.starts_at, b.ends_at, '[)')"""
        )
        return cursor.fetchone()[0]


# --- In-process profile --------------------------------------------------------------------


def usage_body(market: dict, request_number: int, batch: int, rng: random.Random) -> bytes:
    """What usage.lua sends as request ``request_number`` (see there)."""
    contracts = list(market["usage_contracts"].items())
    month_start, month_hours = market["usage_month"]
    batch_hours = batch // USAGE_NODES
    contract_id, hosts = contracts[request_number % len(contracts)]
    block = request_number // len(contracts)
    if block >= month_hours // batch_hours:
        raise RunBroken("no usage left to report for the profile")
    records = []
    for hour in range(block * batch_hours, (block + 1) * batch_hours):
        started_at = month_start + timedelta(hours=hour)
        for node, host in enumerate(hosts, start=1):
            records.append(
                {
                    "id": f"{contract_id}-{hour}-{node}",
                    "contract": contract_id,
                    "node": host,
                    "started_at": f"{started_at:%Y-%m-%dT%H:%M:%SZ}",
                    "ended_at": f"{started_at + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
                    "gpu_seconds": rng.randint(14400, 28800),
                }
            )
    return json.dumps({"records": records}, separators=(",", ":")).encode()


def profile_in_process(market: dict, searches: list[str], *, usage_base: int, batch: int, seed: int) -> dict:
    """Each kind of request sent from this process (django.test.Client: the same view code,
    without gunicorn) under cProfile; CPU per request in Python and in PostgreSQL."""
    from django.test import Client

    rng = random.Random(seed)
    client = Client()
    lab = {"authorization": f"Bearer {market['lab_keys'][0]}"}
    provider = {"authorization": f"Bearer {market['provider_key']}"}
    base = market["base"]

    def booking(listings: list[int]) -> tuple[str, str]:
        hours = rng.randint(*BOOKING_HOURS)
        starts_at = base + timedelta(hours=1 + rng.randrange(WINDOW_HOURS - 1 - hours + 1))
        body = {"gpu_count": GPUS_PER_NODE, "starts_at": f"{starts_at:%Y-%m-%dT%H:%M:%SZ}", "duration_hours": hours}
        return f"/api/v1/listings/{rng.choice(listings)}/book", json.dumps(body)

    usage_bodies = iter([usage_body(market, number, batch, rng) for number in range(usage_base, usage_base + 23)])
    kinds = {
        "get": (300, lambda: client.get("/api/v1/organization", headers=lab), {200}),
        "search": (200, lambda: client.get(rng.choice(searches), headers=lab), {200}),
        "book_big": (
            200,
            lambda: client.post(*booking([market["big_listing"]]), content_type="application/json", headers=lab),
            {201, 409},
        ),
        "book_spread": (
            200,
            lambda: client.post(*booking(market["small_listings"]), content_type="application/json", headers=lab),
            {201, 409},
        ),
        "usage": (
            16,  # and 3 to warm up, 4 profiled: 23 bodies
            lambda: client.post(
                "/api/v1/usage",
                next(usage_bodies),
                content_type="application/json",
                headers=provider,
            ),
            {200},
        ),
    }
    out = {}
    for name, (count, send, expected) in kinds.items():
        for _ in range(3):  # warm: the URL resolver, prepared statements, the connection
            send()
        pid = backend_pid()
        # First without the profiler (it inflates Python's time several-fold), then with it.
        python_start, postgres_start = time.process_time(), process_cpu_seconds(pid)
        with stopwatch() as elapsed:
            statuses = [send().status_code for _ in range(count)]
        python = time.process_time() - python_start
        postgres_end = process_cpu_seconds(pid)
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        statuses += [send().status_code for _ in range(max(1, count // 4))]
        profiler.disable()
        if set(statuses) - expected:
            raise RunBroken(f"profile: {name} answered {sorted(set(statuses))}")
        print_profile(profiler, f"{name}: {max(1, count // 4)} requests in process, cProfile in CPU time", limit=40)
        out[name] = {
            "requests": count,
            "ms_per_request": round(1000 * elapsed() / count, 2),
            "python_cpu_ms": round(1000 * python / count, 2),
            "postgres_cpu_ms": None
            if postgres_start is None or postgres_end is None
            else round(1000 * (postgres_end - postgres_start) / count, 2),
        }
        log(f"profile {name}: {out[name]}")
    return out


# --- The run -------------------------------------------------------------------------------


def search_paths(rng: random.Random, base: datetime) -> list[str]:
    """A small set of searches: H100 capacity for a window in the next three days."""
    paths = []
    for _ in range(SEARCHES):
        starts_at = base + timedelta(hours=rng.randint(1, 72))
        ends_at = starts_at + timedelta(hours=rng.choice(SEARCH_HOURS))
        paths.append(
            f"/api/v1/listings?gpu_model={GPU_MODEL}&min_gpus={rng.choice(SEARCH_GPUS)}"
            f"&starts_at={starts_at:%Y-%m-%dT%H:%M:%SZ}&ends_at={ends_at:%Y-%m-%dT%H:%M:%SZ}"
        )
    return paths


def wrk_plans(market: dict, searches: list[str], args: argparse.Namespace) -> dict[str, tuple[str, list[tuple]]]:
    """Each measurement's Lua script and data file items (usage.lua's ``base`` comes later)."""
    base = market["base"]
    common = [("threads", args.wrk_threads)]
    labs = [*common, *(("key", key) for key in market["lab_keys"])]
    # Bookings start from the hour after the listings' first, so none is in the past during the run.
    booking = [
        ("gpus", GPUS_PER_NODE),
        ("hours", *BOOKING_HOURS),
        ("window", int((base + timedelta(hours=1)).timestamp()), WINDOW_HOURS - 1),
    ]
    if args.idempotency_keys:
        booking.append(("idempotency", f"bench-{os.getpid()}-{int(time.time())}"))
    month_start, month_hours = market["usage_month"]
    return {
        "get": ("get.lua", [*labs, ("path", "/api/v1/organization")]),
        "search": ("get.lua", [*labs, *(("path", path) for path in searches)]),
        "book_big": ("book.lua", [*labs, *booking, ("listing", market["big_listing"])]),
        "book_spread": ("book.lua", [*labs, *booking, *(("listing", listing) for listing in market["small_listings"])]),
        "usage": (
            "usage.lua",
            [
                *common,
                ("key", market["provider_key"]),
                ("month", int(month_start.timestamp()), month_hours),
                ("batch_hours", args.usage_batch // USAGE_NODES),
                *(("contract", contract, *hosts) for contract, hosts in market["usage_contracts"].items()),
            ],
        ),
    }


def start_servers(stack: ExitStack, scratch: Path, url: str, market: dict, args: argparse.Namespace) -> dict:
    """A Celery worker and gunicorn, as the production shape runs them; stopped when ``stack`` closes."""
    env = server_environment(url)
    celery_name = f"bench_http_{os.getpid()}@{socket.gethostname()}"
    celery_log = scratch / "celery.log"
    # The worker serves its own metrics, from a metrics folder of its own (README).
    (scratch / "worker-metrics").mkdir()
    celery_env = {
        **env,
        "PROMETHEUS_MULTIPROC_DIR": str(scratch / "worker-metrics"),
        "WORKER_METRICS_PORT": str(free_port()),
    }
    celery = stack.enter_context(
        process_group(
            "celery",
            [str(ROOT / ".venv/bin/celery"), "-A", "config", "worker", "--concurrency=1", "--loglevel=INFO"]
            + ["-n", celery_name],
            env=celery_env,
            log_path=celery_log,
        )
    )
    port = free_port()
    command = [str(ROOT / ".venv/bin/gunicorn"), "config.wsgi", "--workers", str(args.workers)]
    command += ["--bind", f"127.0.0.1:{port}"]
    if args.threads > 1:
        command += ["--threads", str(args.threads)]
    if GUNICORN_CONFIG.exists():
        command += ["-c", str(GUNICORN_CONFIG.relative_to(ROOT))]
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(scratch / "prometheus")}
    gunicorn_log = scratch / "gunicorn.log"
    gunicorn = stack.enter_context(process_group("gunicorn", command, env=env, log_path=gunicorn_log))
    servers = {
        "port": port,
        "gunicorn_group": gunicorn.pid,
        "gunicorn_log": gunicorn_log,
        "gunicorn": {
            "workers": args.workers,
            "threads": args.threads,
            "worker_class": "sync" if args.threads == 1 else "gthread",
            "config": str(GUNICORN_CONFIG.relative_to(ROOT)) if GUNICORN_CONFIG.exists() else None,
        },
        "celery": {"concurrency": 1},
        "environment": {name: env[name] for name in SHOWN_SETTINGS},
    }
    lab_key = market["lab_keys"][0]
    servers["gunicorn"]["ready_seconds"] = round(wait_for_gunicorn(gunicorn, port, lab_key, gunicorn_log), 2)
    servers["celery"]["ready_seconds"] = round(wait_for_celery(celery, celery_name, celery_log), 2)
    last_hour = market["base"] + timedelta(hours=WINDOW_HOURS - 1)
    servers["celery"]["compute_request_filled_seconds"] = round(celery_smoke(port, lab_key, last_hour), 2)
    return servers


def measure_once(name: str, wrk: str, plan: tuple[str, list[tuple]], scratch: Path, args, state: dict) -> dict:
    """One measured wrk run, after a warm-up for the first of its kind: what wrk reported, the
    CPU the servers used, and the contracts or usage records written meanwhile.

    ``state``: the port, gunicorn's process group, the listings of each booking measurement,
    usage.lua's first request number not used yet (``usage_base``), the kinds warmed up.
    """
    script, items = plan
    run = {"port": state["port"], "connections": args.connections, "threads": args.wrk_threads}

    def data(label: str) -> Path:
        # Each wrk run draws other requests (and Idempotency-Keys) than the runs before it.
        state["invocation"] = state.get("invocation", 0) + 1
        run_items = [("seed", args.seed * 1000 + state["invocation"]), ("invocation", state["invocation"])]
        if name == "usage":
            run_items.append(("base", state["usage_base"]))
        return write_data(scratch / f"{name}-{label}.txt", [*items, *run_items])

    if name not in state["warm"]:
        warm = run_wrk(wrk, script, data("warmup"), seconds=args.warmup, **run)
        state["usage_base"] = int(warm["highest"].get("next_base", state["usage_base"]))
        state["warm"].add(name)
        settle(state["port"])
    listings = state["listings"].get(name, [])
    contracts_before, stored_before = contracts_count(listings), usage_count()
    seconds = args.seconds / args.rounds
    log(f"{name}: wrk -t{args.wrk_threads} -c{args.connections} -d{seconds:g}s")
    sampler, wrk_cpu = CpuSampler(state["gunicorn_group"]), children_cpu_seconds()
    sampler.start()
    try:
        result = run_wrk(wrk, script, data("measured"), seconds=seconds, **run)
    finally:
        cpu = sampler.stop()
    cpu["wrk"] = children_cpu_seconds() - wrk_cpu
    state["usage_base"] = int(result["highest"].get("next_base", state["usage_base"]))
    drain = settle(state["port"])
    return {
        **result,
        "cpu": cpu,
        "drain_seconds": drain,
        "contracts_written": contracts_count(listings) - contracts_before,
        "records_stored": usage_count() - stored_before,
    }


def summarize(name: str, runs: list[dict], args) -> dict:
    """The figures of a measurement's runs together, and the problems they show (``problems``)."""
    requests = sum(run["requests"] for run in runs)
    seconds = sum(run["duration_us"] for run in runs) / 1e6
    statuses = dict(sorted(reduce(added, (run["statuses"] for run in runs), {}).items()))
    errors = reduce(added, (run["errors"] for run in runs), {})
    errors = {kind: n for kind, n in errors.items() if n and kind != "status"}  # statuses are counted apart
    tally = reduce(added, (run["tally"] for run in runs), {})
    cpu = reduce(added, (run["cpu"] for run in runs), {})
    out = {
        "requests": requests,
        "seconds": round(seconds, 2),
        "requests_per_second": round(requests / seconds, 1),
        **percentiles_ms(runs, {"p50_ms": 0.50, "p90_ms": 0.90, "p99_ms": 0.99}),
        "max_ms": round(max(run["latency_us"]["max"] for run in runs) / 1000, 1),
        "errors": errors,
        "statuses": statuses,
        # On a shared machine steadier than the rates: waiting for a core costs no CPU time.
        "cpu_ms_per_request": {kind: round(1000 * spent / max(requests, 1), 2) for kind, spent in cpu.items()},
        "rounds": len(runs),
        "drain_seconds": round(max(run["drain_seconds"] for run in runs), 2),
    }
    problems = [f"{name}: socket {kind} errors: {n}" for kind, n in errors.items()]
    unexpected = {status: n for status, n in statuses.items() if int(status) not in EXPECTED_STATUSES[name]}
    if unexpected:
        problems.append(f"{name}: unexpected statuses {unexpected}")
    if sum(statuses.values()) != requests:
        problems.append(f"{name}: {sum(statuses.values())} statuses for {requests} requests")
    # Requests in flight when wrk stops are still served (one per connection): no more.
    in_flight = len(runs) * args.connections
    if name.startswith("book_"):
        booked, written = statuses.get("201", 0), sum(run["contracts_written"] for run in runs)
        out.update(
            bookings_per_second=round(booked / seconds, 1),
            booked=booked,
            conflicts=statuses.get("409", 0),
            conflicts_by_code={
                "capacity_unavailable": int(tally.get("conflicts_capacity", 0)),
                "credit_limit_exceeded": int(tally.get("conflicts_credit", 0)),
            },
            contracts_written=written,
        )
        if not booked <= written <= booked + in_flight:
            problems.append(f"{name}: {booked} answered 201 but {written} contracts were written")
        if booked == 0:
            problems.append(f"{name}: nothing booked")
    if name == "usage":
        accepted = statuses.get("200", 0) * args.usage_batch
        stored = sum(run["records_stored"] for run in runs)
        out.update(
            batch=args.usage_batch,
            records_per_second=round(accepted / seconds),
            records_stored=stored,
            batches_with_duplicates=int(tally.get("batches_with_duplicates", 0)),
            batches_with_rejections=int(tally.get("batches_with_rejections", 0)),
            batches_past_the_month=int(tally.get("exhausted", 0)),
        )
        for field in ("batches_with_duplicates", "batches_with_rejections", "batches_past_the_month"):
            if out[field]:
                problems.append(f"usage: {field}: {out[field]}")
        if not accepted <= stored <= accepted + in_flight * args.usage_batch:
            problems.append(f"usage: {accepted} records answered 200 but {stored} were stored")
    out["problems"] = problems
    return out


def ratios_and_targets(results: dict, tps: float | None) -> dict:
    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        return round(numerator / denominator, 3) if numerator is not None and denominator else None

    def rate(name: str, field: str = "requests_per_second") -> float | None:
        return results.get(name, {}).get(field)

    ratios = {
        "book_spread_over_pgbench": ratio(rate("book_spread", "bookings_per_second"), tps),
        "book_big_over_book_spread": ratio(
            rate("book_big", "bookings_per_second"), rate("book_spread", "bookings_per_second")
        ),
        "search_over_get": ratio(rate("search"), rate("get")),
    }
    met = {name: value is not None and value >= TARGETS[name] for name, value in ratios.items()}
    return {"ratios": ratios, "targets": TARGETS, "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes (README: 4)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (>1: gthread workers)")
    parser.add_argument("--seconds", type=float, default=10, help="each measurement, and each pgbench run")
    parser.add_argument("--rounds", type=int, default=2, help="each measurement in this many runs, in A B B A order")
    parser.add_argument("--warmup", type=float, default=3, help="wrk before each measurement, not counted")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--usage-batch", type=int, default=1000, help="records per usage request, a multiple of 8")
    parser.add_argument("--labs", type=int, default=LABS, help="labs (API keys) the requests are spread over")
    parser.add_argument("--idempotency-keys", action="store_true", help="a unique Idempotency-Key on each booking")
    parser.add_argument("--profile", action="store_true", help="then profile each request type in process")
    parser.add_argument("--no-pgbench", action="store_true", help="skip the reference (no ratio); quick iterations")
    parser.add_argument("--seed", type=int, default=20261202)
    args = parser.parse_args()
    if args.usage_batch % USAGE_NODES or not USAGE_NODES <= args.usage_batch <= 1000:
        raise SystemExit(f"--usage-batch must be a multiple of {USAGE_NODES} from {USAGE_NODES} to 1000")
    if min(args.workers, args.threads, args.labs, args.wrk_threads, args.rounds) < 1:
        raise SystemExit("--workers, --threads, --labs, --wrk-threads and --rounds must be at least 1")
    if args.connections < args.wrk_threads:
        raise SystemExit("--connections must be at least --wrk-threads")

    # A SIGTERM unwinds like Ctrl-C, through the blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    # Only bench_http* databases, on DATABASE_URL's server if it names a local one.
    url = server_url(database_url(DATABASE), DATABASE)
    os.environ["DATABASE_URL"] = url
    # This process builds the data and profiles with the servers' settings, tasks in-process.
    os.environ.update(REDIS_URL=REDIS_URL, API_RATE_LIMIT="none", API_AUTH_FAILURE_RATE_LIMIT="none")
    load_at_start = [round(value, 2) for value in os.getloadavg()]
    wrk = wrk_binary()
    try:
        import redis

        # db 11 is this benchmark's alone: no task or count left from an earlier run
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5, socket_timeout=5).flushdb()
    except Exception as error:
        raise SystemExit(f"Redis is needed at {REDIS_URL}: {error}")

    setup(default_database=DATABASE, apps=MIGRATE_APPS)
    from django.db import connection

    from marketplace.models import IdempotencyRecord

    truncate([*MARKET_TABLES, "billing_usagerecord", "billing_usagetotal", IdempotencyRecord._meta.db_table])
    # The usage run, its warm-up and the profile's batches each report node-hours of their own.
    usage_contracts = usage_contracts_needed(seconds=2 * (args.warmup + args.seconds), batch=args.usage_batch)
    log(f"building the market ({usage_contracts} usage contracts)")
    with stopwatch() as build_seconds:
        market = build_market(random.Random(args.seed), usage_contracts=usage_contracts, labs=args.labs)
        analyze(vacuum=("broker_allocation", "marketplace_listingnode", "marketplace_node"))
    log(f"market ready in {build_seconds():.1f}s: {market['nodes']} nodes")
    searches = search_paths(random.Random(args.seed), market["base"])
    plans = wrk_plans(market, searches, args)

    tps_runs: list[float] = []

    def reference() -> None:
        if not args.no_pgbench:
            seconds = round(args.seconds)
            tps_runs.append(pgbench_tps(url, clients=16, threads=2, seconds=seconds, database=PGBENCH_DATABASE))
            log(f"pgbench: {tps_runs[-1]:.1f} tps")

    if not args.no_pgbench:
        pgbench_init(url, scale=16, database=PGBENCH_DATABASE)
    reference()

    results: dict[str, dict] = {}
    problems: list[str] = []
    state = {
        "usage_base": 0,
        "warm": set(),
        "listings": {"book_big": [market["big_listing"]], "book_spread": market["small_listings"]},
    }
    runs: dict[str, list[dict]] = {name: [] for name in ORDER}
    connection.close()  # reopened for the counts between runs
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_http_")))
        servers = {}
        try:
            servers = start_servers(stack, scratch, url, market, args)
            state.update(port=servers.pop("port"), gunicorn_group=servers.pop("gunicorn_group"))
            log(f"servers ready: {servers}")
            for number in range(args.rounds):
                # A B ... B A: the members of each ratio run next to each other, and a drift of
                # the machine's load over the run weighs on both alike.
                for name in ORDER if number % 2 == 0 else reversed(ORDER):
                    runs[name].append(measure_once(name, wrk, plans[name], scratch, args, state))
        except RunBroken as error:
            problems.append(str(error))
            log(f"run broken: {error}")
        gunicorn_log = servers.pop("gunicorn_log", None)
        if gunicorn_log is not None and gunicorn_log.exists():
            tracebacks = gunicorn_log.read_text(errors="replace").count("Traceback")
            servers["gunicorn"]["tracebacks_logged"] = tracebacks
            if tracebacks:
                problems.append(f"gunicorn logged {tracebacks} tracebacks")
                log(f"gunicorn's log ends:\n{log_tail(gunicorn_log, 80)}")
    reference()
    for name in ORDER:
        if runs[name]:
            results[name] = summarize(name, runs[name], args)
            problems += results[name].pop("problems")
            log(f"{name}: {results[name]}")

    profile = None
    if args.profile and not problems:
        try:
            profile = profile_in_process(
                market, searches, usage_base=state["usage_base"], batch=args.usage_batch, seed=args.seed
            )
        except RunBroken as error:
            problems.append(str(error))
    sold_twice = nodes_sold_twice()
    if sold_twice:
        problems.append(f"{sold_twice} pairs of allocations sell a node twice")
    tps = sum(tps_runs) / len(tps_runs) if tps_runs else None
    ok = not problems and len(results) == len(plans)
    emit(
        {
            "benchmark": "http",
            "ok": ok,
            "problems": problems,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "warmup_seconds": args.warmup,
            **results,
            "pgbench_tps": tps and round(tps, 1),
            "pgbench_tps_runs": [round(value, 1) for value in tps_runs],
            **ratios_and_targets(results, tps),
            "servers": servers,
            "idempotency_keys": args.idempotency_keys,
            "market": {
                "big_listing_nodes": BIG_NODES,
                "small_listings": len(market["small_listings"]),
                "small_listing_nodes": SMALL_NODES,
                "window_hours": WINDOW_HOURS,
                "labs": args.labs,
                "usage_contracts": len(market["usage_contracts"]),
                "nodes": market["nodes"],
                "build_seconds": round(build_seconds(), 1),
            },
            "nodes_sold_twice": sold_twice,
            "profile_in_process": profile,
            "seed": args.seed,
            "load_average_at_start": load_at_start,
        }
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
