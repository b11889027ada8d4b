"""`gpb usage upload` of 1,000,000 usage records against bench/usage_ingest.py's HTTP run, in one run.

Builds the market of bench/usage_ingest.py (metered contracts over last month, here 1,000 of
them so that a million hourly records fit in the month) and its records, then, on one gunicorn
(the same server as its HTTP run: ``--http-workers``, 2 on two cores), times:

- ``http``: usage_ingest.py's HTTP run, batches of 1,000 encoded beforehand and POSTed by one
  client thread per worker, no Idempotency-Key: the rate a hand-written loop reaches;
- ``gpb``: ``gpb usage upload FILE`` of the same records from a JSON-lines file, as a user
  runs it (its defaults: 4 batches in flight, an Idempotency-Key on each, every answer read and
  counted, the file parsed line by line), in a process of its own.

Each run starts from an empty usage table; in rounds A B B A (``--rounds 2``) by default, so
that a machine busy in one half weighs on both. Prints one JSON line; target: gpb at least 50%
of the HTTP rate.

    .venv/bin/python bench/usage_upload.py [--records N] [--rounds N] [--concurrency N] [--http-workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import usage_ingest as ingest
from _common import MARKET_TABLES, analyze, emit, log, setup, stopwatch, truncate

TARGET_RATIO = 0.5
CONTRACTS = 1000  # a million hourly records fit in one month (200 give ~725 records an hour)
GPB = Path(sys.executable).parent / "gpb"


def run_http(port: int, bodies: list[bytes], secret: str, workers: int, records: int) -> dict:
    ingest.empty_usage()
    with stopwatch() as seconds:
        results = ingest.post_over_http(port, bodies, secret, workers)
    counts = ingest.tally(results)
    if counts["accepted"] != records:
        raise SystemExit(f"http: expected {records} accepted, got {counts}")
    return {"seconds": round(seconds(), 3), "records_per_second": round(records / seconds()), **counts}


def run_gpb(port: int, path: Path, secret: str, concurrency: int | None, records: int) -> dict:
    ingest.empty_usage()
    command = [str(GPB), "--json", "usage", "upload", str(path), "--no-progress"]
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    env = os.environ | {"GPUBROKER_URL": f"http://127.0.0.1:{port}", "GPUBROKER_API_KEY": secret}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with stopwatch() as seconds:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"gpb exited with {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    if summary["accepted"] != records or ingest.usage_count() != records:
        raise SystemExit(f"gpb: expected {records} accepted and stored, got {summary}")
    counts = {key: summary[key] for key in ("accepted", "duplicates", "rejected", "batches")}
    return {"seconds": round(seconds(), 3), "records_per_second": round(records / seconds()), **counts,
            "gpb_cpu_ms_per_1000": round(1e6 * cpu / records, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of A B B A... (1: http then gpb)")
    parser.add_argument("--http-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--concurrency", type=int, help="gpb's --concurrency (its default when omitted)")
    parser.add_argument("--seed", type=int, default=20261203)
    args = parser.parse_args()
    if not ingest.BATCH <= args.records <= 2_000_000:
        raise SystemExit(f"--records must be {ingest.BATCH} to 2,000,000")
    if not GPB.exists():
        raise SystemExit(f"{GPB} is missing: pip install -e ./client (make install does)")

    setup(default_database="gpubroker_bench_upload", apps=("core", "marketplace", "broker", "billing"))
    from django.utils import timezone

    from marketplace.models import IdempotencyRecord

    ingest.CONTRACTS = CONTRACTS
    rng = random.Random(args.seed)
    period, period_start, period_end = ingest.last_month(timezone.now())
    truncate([*ingest.BILLING_TABLES, IdempotencyRecord._meta.db_table, *MARKET_TABLES])
    log(f"building the market ({CONTRACTS} contracts); usage for {period:%Y-%m}")
    with stopwatch() as setup_seconds, tempfile.TemporaryDirectory() as folder:
        _provider, secret, market, hostnames = ingest.build_market(rng, period_start, period_end)
        records, _rows, hours = ingest.generate_records(rng, market, hostnames, period, period_start, args.records)
        del _rows
        path = Path(folder) / "usage.jsonl"
        with path.open("w") as handle:
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        bodies = [json.dumps({"records": records[i : i + ingest.BATCH]}, separators=(",", ":")).encode()
                  for i in range(0, len(records), ingest.BATCH)]  # fmt: skip
        del records
        analyze()
        log(f"{args.records:,} records over {hours} hours, {path.stat().st_size / 2**20:.0f} MiB of JSON lines, "
            f"ready in {setup_seconds():.1f}s")  # fmt: skip

        workers = max(1, args.http_workers)
        runs: dict[str, list[dict]] = {"http": [], "gpb": []}
        order = [name for round_ in range(args.rounds) for name in (("http", "gpb") if round_ % 2 == 0
                                                                     else ("gpb", "http"))]  # fmt: skip
        with ingest.gunicorn(workers) as port:
            ingest.post_over_http(port, bodies[: 2 * workers], secret, workers)  # warm every worker
            for name in order:
                log(f"{name}: {args.records:,} records")
                if name == "http":
                    figures = run_http(port, bodies, secret, workers, args.records)
                else:
                    figures = run_gpb(port, path, secret, args.concurrency, args.records)
                runs[name].append(figures)
                log(f"{name}: {figures['seconds']:.1f}s = {figures['records_per_second']:,} records/s")
        IdempotencyRecord.objects.all().delete()

    http_rate = sum(run["records_per_second"] for run in runs["http"]) / len(runs["http"])
    gpb_rate = sum(run["records_per_second"] for run in runs["gpb"]) / len(runs["gpb"])
    ratio = gpb_rate / http_rate
    gpb_options = f"--concurrency {args.concurrency}" if args.concurrency else "its defaults"
    emit(
        {
            "benchmark": "usage_upload",
            "records": args.records,
            "contracts": len(market),
            "batch_size": ingest.BATCH,
            "measured": f"gpb usage upload (its own process, {gpb_options}) against usage_ingest.py's HTTP run "
                        f"({workers} client threads), one gunicorn of {workers} workers",  # fmt: skip
            "gpb_records_per_second": round(gpb_rate),
            "http_records_per_second": round(http_rate),
            "ratio": round(ratio, 3),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio >= TARGET_RATIO,
            "order": order,
            "runs": runs,
            "period": f"{period:%Y-%m}",
            "seed": args.seed,
            "load_average_at_end": list(os.getloadavg()),
        }
    )


if __name__ == "__main__":
    main()
