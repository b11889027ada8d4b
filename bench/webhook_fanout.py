"""Webhook fan-out: deliveries per second to a local receiver, against a plain client loop.

Registers N endpoints (all event types) of one organization on a local keep-alive receiver
(``ThreadingHTTPServer``, HTTP/1.1, in a process of its own), publishes M events in one
transaction (so N x M pending deliveries), then times sending them all:

- in this process (``webhook_deliveries_send``, what ``deliver_webhooks`` runs), or with
  ``--worker`` by a real Celery worker (threads pool, ``--runs`` runs queued at once) on Redis
  db 12, timed from queueing until every delivery has succeeded;
- the reference, in the same run, against the same receiver: the same number of POSTs of
  the same bodies from a keep-alive client loop (urllib3, as many threads as the sender
  uses), with no database, no signing and no bookkeeping.

    .venv/bin/python bench/webhook_fanout.py [--endpoints 10] [--events 500] [--worker] [--runs 2]

Prints one JSON line. Target: at least 500 deliveries per second.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _common import ROOT, emit, log, setup, stopwatch

REDIS_URL = "redis://127.0.0.1:6379/12"
DATABASE = "gpubroker_bench_webhooks"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counter = None

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
        with self.counter.get_lock():
            self.counter.value += 1

    def log_message(self, *args):
        pass


def _serve(port_value, counter) -> None:
    _Handler.counter = counter
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    port_value.value = server.server_address[1]
    server.serve_forever()


def start_receiver():
    context = multiprocessing.get_context("fork")
    port, counter = context.Value("i", 0), context.Value("q", 0)
    process = context.Process(target=_serve, args=(port, counter), daemon=True)
    process.start()
    deadline = time.monotonic() + 10
    while not port.value:
        if time.monotonic() > deadline:
            raise SystemExit("the receiver did not start")
        time.sleep(0.01)
    return process, port.value, counter


def reference(port: int, bodies: list[bytes], threads: int) -> float:
    """POSTs per second of a plain keep-alive client loop to the same receiver."""
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=threads)
    chunks = [bodies[i::threads] for i in range(threads)]

    def send(chunk):
        for body in chunk:
            pool.urlopen("POST", "/reference", body=body, headers={"Content-Type": "application/json"})

    with stopwatch() as elapsed, ThreadPoolExecutor(threads) as executor:
        list(executor.map(send, chunks))
    pool.close()
    return len(bodies) / elapsed()


def start_worker(args, scratch: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_QUEUE": f"bench_webhooks_{os.getpid()}",
        "WEBHOOK_ALLOW_LOOPBACK": "true",
    }
    log_file = open(scratch / "celery.log", "wb")  # noqa: SIM115 (kept open for the worker's life)
    command = [str(ROOT / ".venv/bin/celery"), "-A", "config", "worker", "--pool=threads",
               f"--concurrency={args.runs}", "--without-gossip", "--without-mingle", "--loglevel=WARNING",
               "-Q", env["CELERY_QUEUE"], "-n", f"bench_webhooks_{os.getpid()}@{socket.gethostname()}"]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--worker", action="store_true", help="send with a real Celery worker on Redis db 12")
    parser.add_argument("--runs", type=int, default=2, help="with --worker: runs queued at once (its threads)")
    args = parser.parse_args()

    os.environ["REDIS_URL"] = REDIS_URL
    os.environ["WEBHOOK_ALLOW_LOOPBACK"] = "true"
    setup(default_database=DATABASE)
    from django.db import connection, transaction

    from events import services
    from events.models import EventType, WebhookDelivery, WebhookEndpoint
    from marketplace.services import organization_create

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE events_webhookdelivery, events_webhookendpoint, events_event RESTART IDENTITY")
        cursor.execute("TRUNCATE marketplace_organization RESTART IDENTITY CASCADE")
    receiver, port, counter = start_receiver()
    organization, _ = organization_create(name="Webhook Lab", role="lab")
    for n in range(args.endpoints):
        services.webhook_endpoint_create(
            organization=organization, url=f"http://127.0.0.1:{port}/hook/{n}", event_types=["*"]
        )
    data = {"object": "contract", "status": "active", "listing_id": 1, "lab_id": organization.pk,
            "provider_id": 2, "cluster_id": 3, "gpu_count": 64, "starts_at": "2026-12-04T00:00:00Z",
            "ends_at": "2026-12-05T00:00:00Z"}  # fmt: skip
    notices = [
        services.Notice(organization.pk, EventType.CONTRACT_CREATED, {**data, "id": n}) for n in range(args.events)
    ]
    enqueue, services._enqueue_delivery = services._enqueue_delivery, lambda: None  # timed below, not at commit
    with stopwatch() as publishing, transaction.atomic():
        services.events_publish(notices)
    services._enqueue_delivery = enqueue
    deliveries = WebhookDelivery.objects.count()
    log(f"{args.events} events, {deliveries} deliveries to {args.endpoints} endpoints in {publishing():.2f} s")

    worker = None
    if args.worker:
        import tempfile

        from config.celery import app

        scratch = Path(tempfile.mkdtemp(prefix="bench_webhooks_"))
        worker = start_worker(args, scratch)
        app.conf.task_default_queue = f"bench_webhooks_{os.getpid()}"
        app.conf.task_always_eager = False  # this process sends; the worker runs
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{(scratch / 'celery.log').read_text()[-3000:]}")
    try:
        before = counter.value
        with stopwatch() as sending:
            if worker:
                for _ in range(args.runs):
                    app.send_task("events.tasks.deliver_webhooks", queue=app.conf.task_default_queue)
                pending = WebhookDelivery.objects.exclude(status=WebhookDelivery.Status.SUCCEEDED)
                while pending.exists():
                    if worker.poll() is not None:
                        raise SystemExit("the worker died")
                    time.sleep(0.02)
            else:
                services.webhook_deliveries_send(budget_seconds=3600)
        received = counter.value - before
        succeeded = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.SUCCEEDED).count()
        body = services.event_body(id=1, type="contract.created", created=organization.created_at, data=data)
        ref_before = counter.value
        reference_rate = reference(port, [body] * deliveries, services.SEND_THREADS)
        assert counter.value - ref_before == deliveries
    finally:
        if worker:
            worker.terminate()
            worker.wait(20)
        receiver.terminate()
    assert WebhookEndpoint.objects.filter(status="enabled").count() == args.endpoints
    rate = deliveries / sending()
    emit(
        {
            "benchmark": "webhook_fanout",
            "mode": "worker" if args.worker else "in_process",
            "endpoints": args.endpoints,
            "events": args.events,
            "deliveries": deliveries,
            "succeeded": succeeded,
            "received": received,
            "seconds": round(sending(), 3),
            "deliveries_per_second": round(rate, 1),
            "reference_per_second": round(reference_rate, 1),
            "ratio": round(rate / reference_rate, 3),
            "publish_seconds": round(publishing(), 3),
            "send_threads": services.SEND_THREADS,
            "batch_size": services.BATCH_SIZE,
            "target_per_second": 500,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
    )


if __name__ == "__main__":
    main()
