"""Uploading a file of usage records (JSON lines or CSV) in batches of 1,000, several in flight.

Each record carries the provider's own ``id``: a record stored before answers as a duplicate,
so uploading a file again after an interruption stores only what was missing. Each batch
carries an Idempotency-Key of its own for its retries, new for each upload, so a second upload
reports what the first stored as duplicates rather than replaying the first's answers.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gpubroker._http import Call, SyncTransport
from gpubroker.errors import AllRejected

BATCH = 1000
CSV_COLUMNS = ("id", "contract", "node", "started_at", "ended_at", "gpu_seconds")


@dataclass
class Line:
    number: int  # 1-based, in the file
    raw: bytes  # the record as JSON
    id: str | None


@dataclass
class Rejection:
    line: int
    id: str | None
    code: str
    message: str
    record: Any


@dataclass
class UploadSummary:
    records: int = 0
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    interrupted: bool = False
    rejections: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "records": self.records,
            "batches": self.batches,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "interrupted": self.interrupted,
        }


def file_format(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def read_jsonl(handle: IO[bytes]) -> Iterator[Line | Rejection]:
    for number, raw in enumerate(handle, start=1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            yield Rejection(number, None, "malformed_line", f"not JSON: {exc}", raw.decode(errors="replace"))
            continue
        if not isinstance(record, dict):
            yield Rejection(number, None, "malformed_line", "not a JSON object", record)
            continue
        record_id = record.get("id")
        yield Line(number, raw, record_id if isinstance(record_id, str) else None)


def read_csv(handle: IO[bytes]) -> Iterator[Line | Rejection]:
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    reader = csv.DictReader(text)
    missing = set(CSV_COLUMNS) - {"node"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"the CSV header lacks {', '.join(sorted(missing))} (columns: {', '.join(CSV_COLUMNS)})")
    for row in reader:
        number = reader.line_num
        record: dict[str, Any] = {key: value for key, value in row.items() if key in CSV_COLUMNS and value != ""}
        contract = record.get("contract")
        if contract is not None and contract.isdigit():
            record["contract"] = int(contract)
        yield Line(number, json.dumps(record, separators=(",", ":")).encode(), record.get("id"))


def batches(items: Iterator[Line | Rejection], size: int, summary: UploadSummary) -> Iterator[list[Line]]:
    """Batches of ``size`` records; lines that are no record at all are rejected on the spot."""
    batch: list[Line] = []
    for item in items:
        if isinstance(item, Rejection):
            summary.rejected += 1
            summary.rejections.append(item)
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def send(transport: SyncTransport, batch: list[Line]) -> tuple[int, int, list[Rejection]]:
    body = b'{"records":[' + b",".join(line.raw for line in batch) + b"]}"
    try:
        answer = transport.run(Call("POST", "/usage", body=body, result=dict))
        refused = answer["rejected"]
        accepted, duplicates = len(answer["accepted"]), len(answer["duplicates"])
    except AllRejected as exc:
        refused, accepted, duplicates = exc.fields.get("rejected", []), 0, 0
    rejections = []
    for rejection in refused:
        line = batch[rejection["index"]]
        rejections.append(Rejection(line.number, rejection.get("id"), rejection["code"], rejection["message"],
                                    json.loads(line.raw)))  # fmt: skip
    return accepted, duplicates, rejections


def upload(
    transport: SyncTransport,
    path: Path,
    *,
    file_format: str = "jsonl",
    batch_size: int = BATCH,
    concurrency: int = 4,
    on_batch: Callable[[UploadSummary, int], None] | None = None,
    stop_after: int | None = None,
    stop: threading.Event | None = None,
) -> UploadSummary:
    """Send every record of the file; ``on_batch(summary, records_done)`` after each batch.
    ``stop_after``: send that many batches at most. Once ``stop`` is set (on Ctrl-C, say), no
    batch is sent; those sent are waited for and counted, and the summary says ``interrupted``."""
    if not 1 <= batch_size <= BATCH:
        raise ValueError(f"a batch holds 1 to {BATCH} records")
    summary = UploadSummary()
    reader = read_csv if file_format == "csv" else read_jsonl
    done = 0
    with path.open("rb") as handle, ThreadPoolExecutor(max_workers=concurrency) as pool:
        in_flight: set[Future] = set()

        def collect(futures: set[Future]) -> None:
            nonlocal done
            for future in futures:
                batch_records, (accepted, duplicates, rejections) = future.batch_records, future.result()
                summary.accepted += accepted
                summary.duplicates += duplicates
                summary.rejected += len(rejections)
                summary.rejections.extend(rejections)
                summary.batches += 1
                done += batch_records
                if on_batch:
                    on_batch(summary, done)

        for number, batch in enumerate(batches(reader(handle), batch_size, summary), start=1):
            if (stop_after is not None and number > stop_after) or (stop is not None and stop.is_set()):
                break
            future = pool.submit(send, transport, batch)
            future.batch_records = len(batch)
            in_flight.add(future)
            if len(in_flight) >= concurrency * 2:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                collect(finished)
        # The batches sent are waited for and counted, even when stopped: their answers say what was stored.
        finished, in_flight = wait(in_flight), set()
        collect(finished.done)
    summary.interrupted = stop is not None and stop.is_set()
    summary.rejections.sort(key=lambda rejection: rejection.line)
    summary.records = summary.accepted + summary.duplicates + summary.rejected
    return summary
