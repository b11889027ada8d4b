from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from operator import attrgetter

from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Min, Sum
from django.utils import timezone

from billing.close_sql import RatedLine, close_in_sql, rate_lines
from billing.credit import lab_exposures_refresh
from billing.ledger import ledger_post
from billing.locks import USAGE_CONTRACT_LOCK, USAGE_CONTRACT_LOCK_STRIPES, USAGE_LOCK
from billing.models import (
    LONG_USAGE,
    Account,
    BillingPeriod,
    CreditNote,
    CreditNoteLine,
    DocumentSequence,
    Invoice,
    InvoiceLine,
    LedgerTransaction,
    Payment,
    PayoutStatement,
    UsageRecord,
)
from billing.usage_load import UsageLoad
from broker.models import Contract, Incident
from core import metrics
from core.errors import InvalidInput, InvalidTransition
from core.money import ZERO, round_money
from core.services import audit_record
from core.timeutils import iso_utc, month_of, next_month, parse_client_time, period_bounds, previous_month
from events.models import EventType
from events.services import Notice, event_publish, events_publish
from marketplace.models import Organization

logger = logging.getLogger(__name__)

MAX_USAGE_BATCH = 1000
MAX_GPU_SECONDS = Decimal("1e14")


# --- Usage ingestion -----------------------------------------------------------------------


@dataclass
class IngestResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)


def _reject(result: IngestResult, index: int, record_id, code: str, message: str) -> None:
    result.rejected.append({"index": index, "id": record_id, "code": code, "message": message})


def _parse_time(value) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    return _parse_time_text(value)


_parse_time_text = functools.lru_cache(maxsize=4096)(parse_client_time)  # a batch repeats its bounds


def _storable(text: str) -> bool:
    """Text the database can store: UTF-8 without NUL (JSON can carry "\\u0000" or a lone surrogate)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _parse_gpu_seconds(value) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    if not number.is_finite() or number < 0 or number > MAX_GPU_SECONDS or number.as_tuple().exponent < -3:
        return None
    return number


@dataclass(slots=True)
class _Candidate:
    index: int
    event_id: str
    contract_id: int
    node_name: str | None
    started_at: datetime
    ended_at: datetime
    gpu_seconds: Decimal
    period: date
    node_id: int | None = None
    # Set once the contract is known, for the capacity check: microseconds from 1970,
    # GPU-seconds in thousandths, and the GPUs of the contract and of one of its nodes.
    start: int = 0
    end: int = 0
    millis: int = 0
    contract_gpus: int = 0
    node_gpus: int = 0


_RECORD_FIELDS = frozenset({"id", "contract", "node", "started_at", "ended_at", "gpu_seconds"})
_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def usage_ingest(*, provider: Organization, records: list) -> IngestResult:
    """Store a provider's usage records; each is accepted, a duplicate, or rejected alone.

    A record's ``id`` is the provider's event id: sent again (even by two retries at the
    same moment) it is stored once, by the database's unique constraint, and reported as a
    duplicate. Each record is first checked alone against its contract, with two queries per
    batch (the contracts, their allocated nodes). Then, under a lock per contract, against
    the usage already stored and the records accepted before it: a record's GPU-seconds are
    spread evenly over its interval, and at no instant may a node's records use more than
    the node's GPUs, nor a contract's records (with or without a node) more than the
    contract's GPUs (``billing.usage_load``); a record that would is rejected as
    ``exceeds_capacity``. The accepted ones are inserted by one statement. The database holds
    the keys: the node exists and the contract is the provider's (one composite key, see
    UsageRecord).
    """
    if not isinstance(records, list) or not 1 <= len(records) <= MAX_USAGE_BATCH:
        raise InvalidInput(
            f"Send 1 to {MAX_USAGE_BATCH} records.", fields={"records": [f"A list of 1 to {MAX_USAGE_BATCH}."]}
        )
    result = IngestResult()
    failed: list[tuple[_Candidate, str]] = []
    candidates = _within_contracts(provider, _well_formed(records, result), result, failed)
    if failed:
        _refuse_on_failed_nodes(provider, failed, result)
    if candidates:
        _store_within_capacity(provider, candidates, result)
    metrics.usage_records_observed(
        accepted=len(result.accepted), duplicates=len(result.duplicates), rejected=[r["code"] for r in result.rejected]
    )
    return result


def _well_formed(records: list, result: IngestResult) -> list[_Candidate]:
    """The records that are well-formed, in the past and within one UTC month; the others rejected."""
    candidates: list[_Candidate] = []
    now = timezone.now()
    for index, raw in enumerate(records):
        if not isinstance(raw, dict):
            _reject(result, index, None, "invalid", "A record is an object.")
            continue
        event_id = raw.get("id")
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            event_id = str(event_id)
        if not isinstance(event_id, str) or not 1 <= len(event_id) <= 128 or not _storable(event_id):
            _reject(result, index, None, "invalid", "id: a string of 1 to 128 characters is required.")
            continue
        if not raw.keys() <= _RECORD_FIELDS:
            unknown = ", ".join(sorted(map(str, raw.keys() - _RECORD_FIELDS)))
            _reject(result, index, event_id, "invalid", f"Unknown field(s): {unknown}.")
            continue
        contract_id = raw.get("contract")
        if isinstance(contract_id, bool) or not isinstance(contract_id, int) or not 1 <= contract_id < 2**62:
            _reject(result, index, event_id, "invalid", "contract: a contract id is required.")
            continue
        node_name = raw.get("node")
        if node_name is not None and (not isinstance(node_name, str) or not 1 <= len(node_name) <= 253):
            _reject(result, index, event_id, "invalid", "node: a hostname string.")
            continue
        started_at, ended_at = _parse_time(raw.get("started_at")), _parse_time(raw.get("ended_at"))
        if started_at is None or ended_at is None:
            _reject(result, index, event_id, "invalid", "started_at and ended_at: ISO 8601 times with a zone.")
            continue
        if ended_at <= started_at:
            _reject(result, index, event_id, "invalid", "ended_at must be after started_at.")
            continue
        if ended_at > now:
            _reject(result, index, event_id, "in_the_future", "Usage can only be reported for time that has passed.")
            continue
        period = month_of(started_at)
        if period != month_of(ended_at - _MICROSECOND):
            _reject(result, index, event_id, "spans_months", "A record may not span two UTC months; split it.")
            continue
        gpu_seconds = _parse_gpu_seconds(raw.get("gpu_seconds"))
        if gpu_seconds is None:
            _reject(result, index, event_id, "invalid", "gpu_seconds: a number >= 0 with at most 3 decimals.")
            continue
        candidates.append(
            _Candidate(index, event_id, contract_id, node_name, started_at, ended_at, gpu_seconds, period)
        )
    return candidates


def _within_contracts(
    provider: Organization, candidates: list[_Candidate], result: IngestResult, failed: list[tuple[_Candidate, str]]
) -> list[_Candidate]:
    """The candidates that fit their contract alone; the others rejected.

    A fit is a contract of the provider's, inside its window (up to an early release), a
    named node allocated to it and inside that allocation, and no more GPU-seconds than the
    contract's GPUs (or the node's) deliver in the interval. Every copy of an event id is
    kept: which one is stored is decided with the usage already reported.
    """
    contracts = _contract_terms(provider, {c.contract_id for c in candidates}) if candidates else {}
    named = {c.contract_id for c in candidates if c.node_name is not None and c.contract_id in contracts}
    nodes = _contract_nodes(named) if named else {}
    fitting: list[_Candidate] = []
    for candidate in candidates:
        contract = contracts.get(candidate.contract_id)
        if contract is None:
            _reject(result, candidate.index, candidate.event_id, "unknown_contract", "No such contract of yours.")
            continue
        starts_at, ends_at, released_at, gpu_count, gpus_per_node = contract
        service_end = min(ends_at, released_at) if released_at else ends_at
        if candidate.started_at < starts_at or candidate.ended_at > service_end:
            _reject(
                result, candidate.index, candidate.event_id, "outside_contract",
                f"Usage must fall inside the contract's window {starts_at:%Y-%m-%dT%H:%MZ} to "
                f"{service_end:%Y-%m-%dT%H:%MZ}.",
            )  # fmt: skip
            continue
        candidate.start, candidate.end = _micros(candidate.started_at), _micros(candidate.ended_at)
        candidate.millis = int(candidate.gpu_seconds.scaleb(3))
        candidate.contract_gpus, candidate.node_gpus = gpu_count, gpus_per_node
        gpus = gpu_count
        if candidate.node_name is not None:
            allocation = nodes.get((candidate.contract_id, candidate.node_name))
            if allocation is None:
                _reject(
                    result, candidate.index, candidate.event_id, "unknown_node", "That node is not in the contract."
                )
                continue
            candidate.node_id, held_from, held_until, failures = allocation
            # Within its allocation, a node's records are its contract's alone: PostgreSQL never
            # lets two allocations of a node overlap, so no other contract's record can overlap it.
            if candidate.start < held_from or candidate.end > held_until:
                _reject(
                    result, candidate.index, candidate.event_id, "outside_contract",
                    f"Node {candidate.node_name} serves the contract from {_from_micros(held_from):%Y-%m-%dT%H:%MZ} "
                    f"to {_from_micros(held_until):%Y-%m-%dT%H:%MZ}.",
                )  # fmt: skip
                continue
            # A failed node serves nobody from its failure's start until its resolution: the
            # contract is credited those hours (billing.sla), so it is not billed for them.
            failure = _failure_during(failures, candidate.start, candidate.end)
            if failure is not None:
                incident_id, failed_from, failed_until = failure
                until = (
                    f"its resolution at {_from_micros(failed_until):%Y-%m-%dT%H:%M:%SZ}"
                    if failed_until
                    else ("its resolution (still open)")
                )
                failed.append((
                    candidate,
                    f"Node {candidate.node_name} failed at {_from_micros(failed_from):%Y-%m-%dT%H:%M:%SZ} "
                    f"(incident {incident_id}); no usage is accepted on it from then until {until}.",
                ))  # fmt: skip
                continue
            gpus = min(gpus_per_node, gpu_count)  # a node record counts against both
        # Exact: GPU-seconds have at most 3 decimals, the interval is a whole number of microseconds.
        micros = candidate.end - candidate.start
        if candidate.millis * 1000 > gpus * micros:
            _reject(
                result, candidate.index, candidate.event_id, "exceeds_capacity",
                f"{candidate.gpu_seconds} GPU-seconds is more than {gpus} GPUs deliver in "
                f"{Decimal(micros) / 1_000_000} seconds.",
            )  # fmt: skip
            continue
        fitting.append(candidate)
    return fitting


def _refuse_on_failed_nodes(provider: Organization, failed: list[tuple[_Candidate, str]], result: IngestResult) -> None:
    """Records on a node during its failure: refused (``node_failed``), unless stored before the
    failure was reported, when a resend is the duplicate it always was."""
    with connection.cursor() as cursor:
        cursor.execute(_STORED_EVENTS, [provider.pk, json.dumps([c.event_id for c, _ in failed])])
        stored = {event_id for (event_id,) in cursor.fetchall()}
    for candidate, message in failed:
        if candidate.event_id in stored:
            result.duplicates.append(candidate.event_id)
        else:
            _reject(result, candidate.index, candidate.event_id, "node_failed", message)


# The ids travel as one array parameter: building and quoting the ORM's IN list of a
# batch's contracts costs more than running the query.
_CONTRACT_TERMS = """
SELECT c.id, c.starts_at, c.ends_at, c.released_at, c.gpu_count, cl.gpus_per_node
FROM broker_contract c JOIN marketplace_cluster cl ON cl.id = c.cluster_id
WHERE c.id = ANY(%s) AND c.provider_id = %s
"""
# Allocation windows in microseconds from 1970, as the records' times are compared, with the
# node's failures during the allocation (start, end or NULL while open; one index probe each).
_CONTRACT_NODES = """
SELECT a.contract_id, n.hostname, a.node_id,
       (extract(epoch FROM a.starts_at) * 1000000)::bigint, (extract(epoch FROM a.ends_at) * 1000000)::bigint,
       (SELECT json_agg(json_build_array(i.id, (extract(epoch FROM i.started_at) * 1000000)::bigint,
                                         (extract(epoch FROM i.resolved_at) * 1000000)::bigint))
        FROM broker_incident i
        WHERE i.node_id = a.node_id AND i.kind = %s
          AND i.started_at < a.ends_at AND (i.resolved_at IS NULL OR i.resolved_at > a.starts_at))
FROM broker_allocation a JOIN marketplace_node n ON n.id = a.node_id
WHERE a.contract_id = ANY(%s)
"""


def _contract_terms(provider: Organization, contract_ids: set[int]) -> dict[int, tuple]:
    """The provider's contracts among these: id -> (starts_at, ends_at, released_at, GPUs, GPUs per node)."""
    with connection.cursor() as cursor:
        cursor.execute(_CONTRACT_TERMS, [list(contract_ids), provider.pk])
        rows = cursor.fetchall()
    return {contract_id: tuple(terms) for contract_id, *terms in rows}


def _contract_nodes(contract_ids: set[int]) -> dict[tuple[int, str], tuple[int, int, int, list]]:
    """(contract id, hostname) -> (node id, allocated from, until, failures) of these contracts'
    nodes, in microseconds; failures are [incident id, start, end or None while open].

    A contract holds a node once ((contract, node) is unique in Allocation).
    """
    with connection.cursor() as cursor:
        cursor.execute(_CONTRACT_NODES, [Incident.Kind.FAILURE, list(contract_ids)])
        rows = cursor.fetchall()
    return {
        (contract_id, hostname): (node_id, starts_at, ends_at, failures or [])
        for contract_id, hostname, node_id, starts_at, ends_at, failures in rows
    }


def _failure_during(failures: list, start: int, end: int) -> list | None:
    """The first failure of a node that overlaps [start, end) (microseconds), if any."""
    for failure in failures:
        _, failed_from, failed_until = failure
        if failed_from < end and (failed_until is None or failed_until > start):
            return failure
    return None


# Taken in stripe order, so two batches never wait for each other in a cycle.
_LOCK_CONTRACT_STRIPES = """
SELECT pg_advisory_xact_lock(%s, stripe)
FROM (SELECT stripe FROM unnest(%s::integer[]) AS stripe ORDER BY stripe) AS ordered
"""
# The stored records of each contract that overlap a stretch of time: one that lasts up to
# LONG_USAGE ends within that long after the stretch (a range of the index on contract and
# ended_at); a longer one is in the partial index usage_contract_long. OFFSET 0 keeps the two
# index scans per stretch (unflattened, the planner may hash the whole table instead). The
# stretches travel as JSON text, as the insert's rows do.
_USAGE_DURING_STRETCHES = """
FROM json_to_recordset(%(stretches)s::json) AS span(c bigint, s timestamptz, f timestamptz)
CROSS JOIN LATERAL (
    SELECT * FROM billing_usagerecord u
    WHERE u.contract_id = span.c AND u.ended_at > span.s AND u.ended_at < span.f + %(long)s
      AND u.started_at < span.f AND u.ended_at - u.started_at <= %(long)s
    UNION ALL
    SELECT * FROM billing_usagerecord u
    WHERE u.contract_id = span.c AND u.ended_at > span.s
      AND u.started_at < span.f AND u.ended_at - u.started_at > %(long)s
    OFFSET 0
) u
"""
# Times in microseconds from 1970 and GPU-seconds in thousandths, as the check counts them.
_STORED_USAGE_DURING = (
    """
SELECT u.id, u.contract_id, u.node_id,
       (extract(epoch FROM u.started_at) * 1000000)::bigint,
       (extract(epoch FROM u.ended_at) * 1000000)::bigint,
       (u.gpu_seconds * 1000)::bigint,
       u.event_id"""
    + _USAGE_DURING_STRETCHES
)
# The ids known to the check go as one array literal: PostgreSQL hashes a constant array
# for <> ALL, so each record read is checked against it at once.
_STORED_SINCE = "SELECT u.id" + _USAGE_DURING_STRETCHES + "WHERE u.id <> ALL(%(known)s::bigint[])"
_STORED_EVENTS = """
SELECT event_id FROM billing_usagerecord
WHERE provider_id = %s AND event_id = ANY(ARRAY(SELECT json_array_elements_text(%s::json)))
"""


@dataclass
class _Verdicts:
    accepted: list[_Candidate] = field(default_factory=list)
    duplicates: list[_Candidate] = field(default_factory=list)
    rejected: list[tuple[_Candidate, str]] = field(default_factory=list)


def _store_within_capacity(provider: Organization, candidates: list[_Candidate], result: IngestResult) -> None:
    """Accept, in batch order, each record that fits with the stored usage and the records
    accepted before it, and store the accepted ones; the others are duplicates or rejected.

    A copy of an event id already stored, or accepted earlier in the batch, is a duplicate
    and counts nothing; the first copy that fits wins. Stored copies are known from the
    stored records the check reads, which hold every plain resend; a copy stored with another
    interval or contract shows up as a conflict of the insert, or, if rejected, by one lookup
    of the rejected ids, and the check runs again without it, so no record is refused for
    room a duplicate took.

    Optimistic, so batches for the same contracts insert side by side: the check reads and
    inserts without waiting, then takes the locks of the batch's contracts (until commit, in
    one order) and reads again. A batch that committed meanwhile held those locks, so its
    records are visible now; if with them a record of this batch no longer fits, the insert
    is rolled back to a savepoint (which lets the locks go too) and the batch is checked
    again. A rejection or a duplicate needs no lock: it rests on committed records, and
    records are never deleted. No one waits for a row while holding these locks, so the
    waits cannot form a cycle. The usage lock is held shared throughout (a close takes it
    alone).
    """
    # Usually every record is new and fits: the rows to insert are then the first copy of each
    # id, prepared once.
    first_copies: dict[str, _Candidate] = {}
    for candidate in candidates:
        first_copies.setdefault(candidate.event_id, candidate)
    prepared = _insert_payload(list(first_copies.values()))
    stripes = sorted({c.contract_id % USAGE_CONTRACT_LOCK_STRIPES for c in candidates})
    stretches = _stretches(candidates)
    stored: set[str] = set()
    inserted: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", USAGE_LOCK)
        while True:
            seen = _stored_usage_during(cursor, stretches)
            stored |= {row[-1] for row in seen}
            verdicts = _check_capacity(candidates, seen, stored)
            if verdicts.rejected:
                cursor.execute(_STORED_EVENTS, [provider.pk, json.dumps([c.event_id for c, _ in verdicts.rejected])])
                found = {event_id for (event_id,) in cursor.fetchall()} - stored
                if found:
                    stored |= found
                    continue
            if not verdicts.accepted:
                break
            savepoint = transaction.savepoint()
            usual = len(verdicts.accepted) == len(first_copies) and all(
                first_copies[c.event_id] is c for c in verdicts.accepted
            )
            inserted = _insert_usage(cursor, provider, prepared if usual else _insert_payload(verdicts.accepted))
            conflicted = {c.event_id for c in verdicts.accepted} - inserted.keys()
            if conflicted and verdicts.rejected:
                transaction.savepoint_rollback(savepoint)
                stored |= conflicted
                continue
            cursor.execute(_LOCK_CONTRACT_STRIPES, [USAGE_CONTRACT_LOCK, stripes])
            if _still_fits(cursor, stretches, candidates, seen, inserted, verdicts.accepted):
                transaction.savepoint_commit(savepoint)
                break
            transaction.savepoint_rollback(savepoint)
            inserted = {}
    for candidate, message in verdicts.rejected:
        _reject(result, candidate.index, candidate.event_id, "exceeds_capacity", message)
    # Accepted but not inserted: stored meanwhile, or before with another interval or contract.
    stored_now = {c.index for c in verdicts.accepted if c.event_id in inserted}
    duplicates = {c.index for c in verdicts.duplicates} | {c.index for c in verdicts.accepted} - stored_now
    for candidate in candidates:
        if candidate.index in stored_now:
            result.accepted.append(candidate.event_id)
        elif candidate.index in duplicates:
            result.duplicates.append(candidate.event_id)


def _still_fits(
    cursor,
    stretches: str,
    candidates: list[_Candidate],
    seen: list[tuple],
    inserted: dict[str, int],
    accepted: list[_Candidate],
) -> bool:
    """Whether the inserted records still fit, with the records stored since the check read
    (read again, under the locks of the batch's contracts: first whether there are any)."""
    known = [row[0] for row in seen]
    known.extend(inserted.values())
    literal = "{" + ",".join(map(str, known)) + "}"
    cursor.execute(_STORED_SINCE, {"stretches": stretches, "long": LONG_USAGE, "known": literal})
    if not cursor.fetchall():
        return True
    contract_loads, node_loads = _usage_loads(candidates, _stored_usage_during(cursor, stretches), every=True)
    for candidate in accepted:
        if candidate.event_id not in inserted:
            continue
        if candidate.node_id is not None and not node_loads[candidate.node_id].within(candidate.start, candidate.end):
            return False
        if not contract_loads[candidate.contract_id].within(candidate.start, candidate.end):
            return False
    return True


def _usage_loads(
    candidates: list[_Candidate], rows: list[tuple], *, every: bool = False
) -> tuple[dict[int, UsageLoad], dict[int, UsageLoad]]:
    """The loads of the batch's contracts and named nodes, counting these stored records.

    Unless ``every`` is asked for, a contract or node keeps none when its records (the
    batch's and the stored ones) cannot use more than its GPUs at any instant, whatever is
    accepted (see _may_exceed).
    """
    contract_spans: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    node_spans: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    gpus: dict[tuple[str, int], int] = {}
    for candidate in candidates:
        span = (candidate.start, candidate.end, candidate.millis)
        contract_spans[candidate.contract_id].append(span)
        gpus["contract", candidate.contract_id] = candidate.contract_gpus
        if candidate.node_id is not None:
            node_spans[candidate.node_id].append(span)
            gpus["node", candidate.node_id] = candidate.node_gpus
    for _, contract_id, node_id, start, end, millis, _ in rows:
        contract_spans[contract_id].append((start, end, millis))
        if node_id in node_spans:
            node_spans[node_id].append((start, end, millis))
    contract_loads = {
        contract_id: UsageLoad(gpus["contract", contract_id])
        for contract_id, spans in contract_spans.items()
        if every or _may_exceed(spans, gpus["contract", contract_id])
    }
    node_loads = {
        node_id: UsageLoad(gpus["node", node_id])
        for node_id, spans in node_spans.items()
        if every or _may_exceed(spans, gpus["node", node_id])
    }
    for _, contract_id, node_id, start, end, millis, _ in rows:
        if contract_id in contract_loads:
            contract_loads[contract_id].add(start, end, millis)
        if node_id in node_loads:
            node_loads[node_id].add(start, end, millis)
    return contract_loads, node_loads


def _may_exceed(spans: list[tuple[int, int, int]], gpus: int) -> bool:
    """Whether records (start, end, GPU-milliseconds) might use more than ``gpus`` at once.

    They fall in clusters that overlap one another in time; a record alone was checked
    alone, and a cluster whose records have one duration cannot exceed ``gpus`` when their
    rates add up to no more (a cluster of mixed durations is not added up here).
    """
    spans.sort()
    reach = spans[0][0]
    size = total = duration = 0
    mixed = False
    for start, end, millis in spans:
        if start >= reach:  # a new cluster: the last one is done
            if size > 1 and (mixed or total * 1000 > gpus * duration):
                return True
            size, total, duration, mixed, reach = 1, millis, end - start, False, end
        else:
            size += 1
            total += millis
            mixed = mixed or end - start != duration
            reach = max(reach, end)
    return size > 1 and (mixed or total * 1000 > gpus * duration)


def _check_capacity(candidates: list[_Candidate], seen: list[tuple], stored: set[str]) -> _Verdicts:
    """Each candidate in batch order: a duplicate (its id is stored or taken), accepted (it fits
    with the stored usage and the candidates accepted before it), or rejected with a reason."""
    contract_loads, node_loads = _usage_loads(candidates, seen)
    verdicts = _Verdicts()
    taken: set[str] = set()
    for candidate in candidates:
        if candidate.event_id in stored or candidate.event_id in taken:
            verdicts.duplicates.append(candidate)
            continue
        start, end, millis = candidate.start, candidate.end, candidate.millis
        node_load = node_loads.get(candidate.node_id)
        contract_load = contract_loads.get(candidate.contract_id)
        if node_load is not None and not node_load.fits(start, end, millis):
            verdicts.rejected.append((candidate, _over_capacity(candidate, node_load, f"Node {candidate.node_name}")))
            continue
        if contract_load is not None and not contract_load.fits(start, end, millis):
            holder = f"Contract {candidate.contract_id}"
            verdicts.rejected.append((candidate, _over_capacity(candidate, contract_load, holder)))
            continue
        if node_load is not None:
            node_load.add(start, end, millis)
        if contract_load is not None:
            contract_load.add(start, end, millis)
        taken.add(candidate.event_id)
        verdicts.accepted.append(candidate)
    return verdicts


def _stretches(candidates: list[_Candidate]) -> str:
    """The stretches of time the batch covers, per contract, as the JSON the reads take."""
    intervals: dict[int, set[tuple[datetime, datetime]]] = defaultdict(set)
    for candidate in candidates:
        intervals[candidate.contract_id].add((candidate.started_at, candidate.ended_at))
    spans = [
        {"c": contract_id, "s": start.isoformat(), "f": end.isoformat()}
        for contract_id, stretches in intervals.items()
        for start, end in _merged(sorted(stretches))
    ]
    return json.dumps(spans, separators=(",", ":"))


def _stored_usage_during(cursor, stretches: str) -> list[tuple]:
    """The stored records of the batch's contracts that overlap the batch's records, read by
    contract over the stretches of time the batch covers: (id, contract, node, start, end,
    GPU-milliseconds, event id).

    A node's stored records are all among its contract's: a record lies within its node's
    allocation, and allocations of one node never overlap.
    """
    cursor.execute(_STORED_USAGE_DURING, {"stretches": stretches, "long": LONG_USAGE})
    return list({row[0]: row for row in cursor.fetchall()}.values())  # a record may overlap two stretches


def _merged(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The union of half-open intervals given in order, as disjoint intervals (touching ones joined)."""
    merged = [spans[0]]
    for start, end in spans[1:]:
        last_start, last_end = merged[-1]
        if start > last_end:
            merged.append((start, end))
        elif end > last_end:
            merged[-1] = (last_start, end)
    return merged


@functools.lru_cache(maxsize=4096)  # a batch repeats a few interval bounds many times
def _micros(moment: datetime) -> int:
    """Microseconds from 1970, as the capacity check counts time."""
    return (moment - _EPOCH) // _MICROSECOND


def _from_micros(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


def _over_capacity(candidate: _Candidate, load: UsageLoad, holder: str) -> str:
    """Why a record does not fit: what is already reported for its node or contract then."""
    start, end, millis = candidate.start, candidate.end, candidate.millis
    return (
        f"{holder} has {load.capacity} GPUs. From {iso_utc(candidate.started_at)} to {iso_utc(candidate.ended_at)}, "
        f"{_figure(load.used(start, end), 3)} GPU-seconds are already reported for it, up to "
        f"{_figure(load.peak(start, end), 6)} GPUs at once; {_figure(Fraction(millis, 1000), 3)} more GPU-seconds "
        f"({_figure(Fraction(1000 * millis, end - start), 6)} GPUs throughout) would use more GPUs than it has."
    )


def _figure(value: Fraction, places: int) -> str:
    """A figure to ``places`` decimals at most, "about" when rounded."""
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    rounded = exact.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    text = format(rounded.normalize(), "f")
    return text if Fraction(rounded) == value else f"about {text}"


# One statement for the whole batch: the rows travel as one JSON text (psycopg adapts
# Python lists to arrays several times slower), typed by json_to_recordset.
_INSERT_USAGE_ROWS = """
INSERT INTO billing_usagerecord
    (provider_id, event_id, contract_id, node_id, started_at, ended_at, gpu_seconds, period, received_at)
SELECT %(provider)s, r.e, r.c, r.n, r.s, r.f, r.g, r.p, %(now)s
FROM json_to_recordset(%(rows)s::json)
     AS r(e text, c bigint, n bigint, s timestamptz, f timestamptz, g numeric, p date)
ON CONFLICT (provider_id, event_id) DO NOTHING
RETURNING event_id, id
"""
# The usage records' deferred foreign keys (migrations 0005 and 0013).
_USAGE_KEYS = "usage_contract_of_provider, usage_node_exists"


def _insert_usage(cursor, provider: Organization, payload: str) -> dict[str, int]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: the event ids that were new, with their rows' ids.

    Run under the usage lock, held shared; a month close takes it alone, so it reads its
    watermark only once the batches in flight have committed.
    """
    # The keys are checked by the insert, not at commit: until the commit, concurrent batches
    # wait for this one (its capacity locks, its usage totals' rows), so it should do little.
    cursor.execute(f"SET CONSTRAINTS {_USAGE_KEYS} IMMEDIATE")
    cursor.execute(_INSERT_USAGE_ROWS, {"provider": provider.pk, "now": timezone.now(), "rows": payload})
    inserted = dict(cursor.fetchall())
    cursor.execute(f"SET CONSTRAINTS {_USAGE_KEYS} DEFERRED")  # as declared, for the rest of the transaction
    return inserted


def _insert_payload(rows: list[_Candidate]) -> str:
    """The rows to insert, as the JSON text _INSERT_USAGE_ROWS reads."""
    # A batch has few distinct times and months: each is formatted once.
    times: dict[datetime, str] = {}
    months: dict[date, str] = {}
    return json.dumps(
        [
            {
                "e": row.event_id,
                "c": row.contract_id,
                "n": row.node_id,
                "s": times.get(row.started_at) or times.setdefault(row.started_at, row.started_at.isoformat()),
                "f": times.get(row.ended_at) or times.setdefault(row.ended_at, row.ended_at.isoformat()),
                "g": format(row.gpu_seconds, "f"),
                "p": months.get(row.period) or months.setdefault(row.period, row.period.isoformat()),
            }
            # In event id order: two calls storing overlapping ids wait on each other in one
            # order, never in a cycle.
            for row in sorted(rows, key=attrgetter("event_id"))
        ],
        separators=(",", ":"),
    )


def usage_totals_rebuild() -> None:
    """Recompute the usage totals from the records (after a bulk load made with triggers off)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT billing_usage_totals_rebuild(%s, %s)", USAGE_LOCK)


# --- Numbering -----------------------------------------------------------------------------


def _next_numbers(name: str, count: int) -> list[int]:
    """Reserve ``count`` consecutive numbers of a gapless sequence (row lock until commit)."""
    sequence, _ = DocumentSequence.objects.get_or_create(name=name)
    sequence = DocumentSequence.objects.select_for_update().get(pk=sequence.pk)
    first = sequence.last_value + 1
    sequence.last_value += count
    sequence.save(update_fields=["last_value"])
    return list(range(first, first + count))


# --- Closing a month -------------------------------------------------------------------------


@dataclass
class CloseResult:
    period: BillingPeriod
    created: bool
    invoices: int = 0
    statements: int = 0


def billing_period_close(*, period: date, now: datetime | None = None) -> CloseResult:
    """Issue the invoices and provider statements of an ended month, once."""
    now = now or timezone.now()
    _, period_end = period_bounds(period)
    if now < period_end:
        raise InvalidTransition(f"{period:%Y-%m} has not ended yet.", code="period_not_ended")
    existing = BillingPeriod.objects.filter(period=period).first()
    if existing is not None:
        return CloseResult(period=existing, created=False)
    try:
        with transaction.atomic():
            return _close(period)
    except IntegrityError:
        # Another close of the same month won the race; it did the work.
        existing = BillingPeriod.objects.filter(period=period).first()
        if existing is None:
            raise
        return CloseResult(period=existing, created=False)


def _close(period: date) -> CloseResult:
    latest = BillingPeriod.objects.select_for_update().order_by("-period").first()
    if latest is not None and period <= latest.period:
        raise InvalidTransition(f"{latest.period:%Y-%m} is already closed; months close in order.")
    if latest is not None and period != next_month(latest.period):
        raise InvalidTransition(f"Close {next_month(latest.period):%Y-%m} first; months close in order.")
    if latest is None:
        first = _first_billable_month()
        if first is not None and first < period:
            # Skipping it would leave its contracts unbilled for good: later closes bill later months.
            raise InvalidTransition(f"Close {first:%Y-%m} first; months close in order.")
    with connection.cursor() as cursor:
        # Wait for in-flight usage batches; later ones get higher ids than the watermark.
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", USAGE_LOCK)
    watermark = UsageRecord.objects.aggregate(top=Max("id"))["top"] or 0
    closed = BillingPeriod.objects.create(period=period, usage_watermark=watermark)
    invoices, statements = close_in_sql(period=period, now=timezone.now())
    lab_exposures_refresh()  # the month's hours are invoiced now: they leave the contracts for the invoices
    _publish_close(period)
    return CloseResult(period=closed, created=True, invoices=invoices, statements=statements)


def _publish_close(period: date) -> None:
    """Tell each lab of its invoice and each provider of its statement (one statement each)."""
    invoices = Invoice.objects.filter(period=period).values("id", "lab_id", "number", "status", "total", "issued_at")
    statements = PayoutStatement.objects.filter(period=period).values(
        "id", "provider_id", "number", "gross", "fee", "sla_credits", "net", "status"
    )
    month = f"{period:%Y-%m}"
    events_publish(
        [
            *(
                Notice(row["lab_id"], EventType.INVOICE_ISSUED, {"object": "invoice", **row, "period": month},
                       f"invoice.issued:{row['id']}")
                for row in invoices
            ),
            *(
                Notice(row["provider_id"], EventType.PAYOUT_STATEMENT_ISSUED,
                       {"object": "payout_statement", **row, "period": month}, f"payout_statement.issued:{row['id']}")
                for row in statements
            ),
        ]
    )  # fmt: skip


def _first_billable_month() -> date | None:
    """The month the earliest contract starts in: no earlier month has anything to bill."""
    first = Contract.objects.aggregate(first=Min("starts_at"))["first"]
    return month_of(first) if first else None


def billing_periods_close_due(*, now: datetime | None = None) -> dict:
    """Close every ended month not closed yet, oldest first, so a missed run is caught up.

    Returns what happened to the last month looked at; closing twice creates nothing.
    """
    now = now or timezone.now()
    last_ended = previous_month(month_of(now))
    latest = BillingPeriod.objects.order_by("-period").first()
    if latest is not None:
        period = next_month(latest.period)
    else:  # the first close: from the first month anything was sold for
        period = min(filter(None, (_first_billable_month(), last_ended)))
    outcome = {"period": f"{last_ended:%Y-%m}", "created": False, "invoices": 0}
    while period <= last_ended:
        result = billing_period_close(period=period, now=now)
        logger.info("closed %s: %s invoice(s)", f"{period:%Y-%m}", result.invoices)
        outcome = {"period": f"{period:%Y-%m}", "created": result.created, "invoices": result.invoices}
        period = next_month(period)
    return outcome


# An issued line's fields in RatedLine's order, after the lab.
_LINE_FIELDS = ("contract_id", "provider_id", "kind", "service_period", "description", "quantity", "unit_price",
                "amount", "fee_rate", "fee_amount")  # fmt: skip


def billing_period_preview(*, lab: Organization, period: date) -> list[RatedLine]:
    """The lab's invoice lines for the month, as its close issued them or would issue them now.

    An open month is rated by the close's own statement: the next month to close also bills
    the late usage of closed months, a later one only its own. A closed month shows the
    lines its invoice was issued with, plus its late usage that no close has billed yet (the
    next close bills it as adjustment lines). Saves nothing.
    """
    latest = BillingPeriod.objects.order_by("-period").first()
    if latest is None or period > latest.period:
        return rate_lines(period=period, lab_id=lab.pk)
    issued = InvoiceLine.objects.non_draft().filter(invoice__lab=lab, invoice__period=period)
    late = rate_lines(period=next_month(latest.period), lab_id=lab.pk)
    return [
        *(RatedLine(*row) for row in issued.order_by("id").values_list("invoice__lab_id", *_LINE_FIELDS)),
        *(line for line in late if line.service_period == period),
    ]


# --- Payments, credit notes, payouts ---------------------------------------------------------


def invoice_amount_due(invoice: Invoice) -> Decimal:
    credited = invoice.credit_notes.aggregate(total=Sum("amount"))["total"] or ZERO
    paid = invoice.payments.aggregate(total=Sum("amount"))["total"] or ZERO
    return invoice.total - credited - paid


def invoice_record_payment(
    *,
    invoice: Invoice,
    amount: Decimal | None = None,
    reference: str = "",
    received_at: datetime | None = None,
    actor=None,
    actor_label: str = "",
) -> Payment:
    """Record money received from the lab (default: all that is due); the invoice is paid
    once nothing is due."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status != Invoice.Status.ISSUED:
            raise InvalidTransition(f"A {invoice.status} invoice takes no payment.")
        due = invoice_amount_due(invoice)
        amount = due if amount is None else amount
        if not amount.is_finite() or amount <= 0 or round_money(amount) != amount:
            raise InvalidInput("A payment is a positive amount in cents.", fields={"amount": ["Invalid amount."]})
        if amount > due:
            raise InvalidInput(f"Only {due} is due.", fields={"amount": [f"At most {due}."]})
        payment = Payment.objects.create(
            invoice=invoice, amount=amount, reference=reference, received_at=received_at or timezone.now()
        )
        legs = {(Account.Kind.CASH, None): amount, (Account.Kind.LAB_RECEIVABLE, invoice.lab_id): -amount}
        ledger_post([(LedgerTransaction.Kind.PAYMENT, f"payment:{payment.pk}", f"Payment for {invoice.number}", legs)])
        if amount == due:
            invoice.status = Invoice.Status.PAID
            invoice.paid_at = timezone.now()
            invoice.save(update_fields=["status", "paid_at"])
        lab_exposures_refresh([invoice.lab_id])
        audit_record(
            action="payment_recorded",
            target=invoice,
            actor=actor,
            actor_label=actor_label,
            message=f"{amount} received ({reference or 'no reference'}); {due - amount} still due",
        )
    return payment


def _line_credit_room(lines: list[InvoiceLine]) -> dict[int, tuple[Decimal, Decimal]]:
    """For each line: amount and fee not yet credited."""
    credited = {
        line_id: (amount, fee)
        for line_id, amount, fee in CreditNoteLine.objects.filter(invoice_line__in=lines)
        .order_by()
        .values_list("invoice_line_id")
        .annotate(Sum("amount"), Sum("fee_amount"))
    }
    room = {}
    for line in lines:
        amount, fee = credited.get(line.pk, (ZERO, ZERO))
        room[line.pk] = (line.amount - amount, line.fee_amount - fee)
    return room


def credit_note_create(
    *,
    invoice: Invoice,
    reason: str,
    amount: Decimal | None = None,
    contract: Contract | None = None,
    actor=None,
    actor_label: str = "",
) -> CreditNote:
    """Correct an issued invoice: credit ``amount`` (default: all that is left), spread over
    its lines (or only the lines of ``contract``), with each provider's share reversed.
    An invoice left with nothing due is settled (if partly paid) or void."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("A credit note needs a reason.", fields={"reason": ["This field is required."]})
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status != Invoice.Status.ISSUED:
            raise InvalidTransition(f"Only an unpaid issued invoice can be credited; this one is {invoice.status}.")
        # A note reverses sales; an SLA credit line (a negative amount) is never reversed.
        sales = invoice.lines.filter(amount__gt=0)
        lines = list(sales if contract is None else sales.filter(contract=contract))
        room = _line_credit_room(lines)
        available = min(sum((r[0] for r in room.values()), ZERO), invoice_amount_due(invoice))
        amount = available if amount is None else amount
        if not amount.is_finite() or amount <= 0 or round_money(amount) != amount:
            raise InvalidInput("A credit is a positive amount in cents.", fields={"amount": ["Invalid amount."]})
        if amount > available:
            raise InvalidInput(f"At most {available} can be credited.", fields={"amount": [f"At most {available}."]})
        number = _next_numbers("credit_note", 1)[0]
        note = CreditNote.objects.create(
            invoice=invoice, number=f"CN-{invoice.period:%Y%m}-{number:06d}", reason=reason, amount=amount
        )
        parts = []
        left = amount
        for line in lines:
            line_room, fee_room = room[line.pk]
            share = min(line_room, left)
            if share <= 0:
                continue
            # The fee reversed so far follows the amount credited so far, rounded like the line
            # itself, so a line credited in full gives back exactly its fee.
            credited_before, fee_before = line.amount - line_room, line.fee_amount - fee_room
            fee_target = min(round_money((credited_before + share) * line.fee_rate), line.fee_amount)
            fee_share = max(ZERO, min(fee_target - fee_before, share))
            parts.append(CreditNoteLine(credit_note=note, invoice_line=line, amount=share, fee_amount=fee_share))
            left -= share
            if left == 0:
                break
        CreditNoteLine.objects.bulk_create(parts)
        legs: dict[tuple[str, int | None], Decimal] = defaultdict(lambda: ZERO)
        legs[(Account.Kind.LAB_RECEIVABLE, invoice.lab_id)] -= amount
        for part in parts:
            legs[(Account.Kind.PROVIDER_PAYABLE, part.invoice_line.provider_id)] += part.amount - part.fee_amount
            legs[(Account.Kind.PLATFORM_REVENUE, None)] += part.fee_amount
        ledger_post(
            [(LedgerTransaction.Kind.CREDIT_NOTE, f"credit_note:{note.pk}", f"Credit note {note.number}", legs)]
        )
        if invoice_amount_due(invoice) == 0:
            # Nothing left to pay: settled if the lab paid part of it, void if it paid nothing.
            if invoice.payments.exists():
                invoice.status, invoice.paid_at = Invoice.Status.PAID, timezone.now()
                invoice.save(update_fields=["status", "paid_at"])
            else:
                invoice.status, invoice.voided_at = Invoice.Status.VOID, timezone.now()
                invoice.save(update_fields=["status", "voided_at"])
                audit_record(
                    action="invoice_voided",
                    target=invoice,
                    actor=actor,
                    actor_label=actor_label,
                    message=f"{reason} (credit note {note.number}, {note.amount})",
                )
        lab_exposures_refresh([invoice.lab_id])
        event_publish(
            organization_id=invoice.lab_id,
            type=EventType.CREDIT_NOTE_ISSUED,
            data={
                "object": "credit_note", "id": note.pk, "number": note.number, "amount": note.amount,
                "reason": reason, "invoice": {"id": invoice.pk, "number": invoice.number, "status": invoice.status},
            },
        )  # fmt: skip
        audit_record(
            action="credit_note_issued",
            target=invoice,
            actor=actor,
            actor_label=actor_label,
            message=f"{note.number}: {note.amount} ({reason})",
        )
    return note


def invoice_void(*, invoice: Invoice, reason: str, actor=None, actor_label: str = "") -> CreditNote:
    """Void an unpaid issued invoice with a credit note for everything still due."""
    if invoice.payments.exists():
        raise InvalidTransition("A partly paid invoice cannot be voided; credit the rest instead.")
    with transaction.atomic():
        note = credit_note_create(invoice=invoice, reason=reason, actor=actor, actor_label=actor_label)
        invoice.refresh_from_db()
        if invoice.status != Invoice.Status.VOID:
            raise InvalidTransition("The invoice still has an amount due after crediting it.")
    return note


def contract_credit_invoiced(*, contract: Contract, reason: str, actor=None, actor_label: str = "") -> list[CreditNote]:
    """Credit what is still due of a contract's lines on unpaid issued invoices."""
    notes = []
    invoices = Invoice.objects.filter(status=Invoice.Status.ISSUED, lines__contract=contract).distinct()
    for invoice in invoices.order_by("id"):
        lines = list(invoice.lines.filter(contract=contract, amount__gt=0))
        room = sum((amount for amount, _ in _line_credit_room(lines).values()), ZERO)
        due = invoice_amount_due(invoice)
        amount = min(room, due)
        if amount > 0:
            notes.append(
                credit_note_create(
                    invoice=invoice,
                    reason=reason,
                    amount=amount,
                    contract=contract,
                    actor=actor,
                    actor_label=actor_label,
                )
            )
    return notes


def payout_mark_paid(*, statement: PayoutStatement, actor=None, actor_label: str = "") -> PayoutStatement:
    """Record that the provider's net was sent (once: marking a paid statement again does nothing)."""
    with transaction.atomic():
        statement = PayoutStatement.objects.select_for_update().get(pk=statement.pk)
        if statement.status == PayoutStatement.Status.PAID:
            return statement
        if statement.status == PayoutStatement.Status.CARRIED:
            raise InvalidTransition(
                f"{statement.number} was carried into {statement.carried_into.number}; nothing is paid on it.",
                code="payout_carried",
            )
        if statement.net < 0:
            raise InvalidTransition(
                f"{statement.number} has a negative net ({statement.net}): the provider owes it, and the "
                "next month's statement deducts it.",
                code="payout_negative",
            )
        if statement.net > 0:
            legs = {
                (Account.Kind.PROVIDER_PAYABLE, statement.provider_id): statement.net,
                (Account.Kind.CASH, None): -statement.net,
            }
            ledger_post([(LedgerTransaction.Kind.PAYOUT, f"payout:{statement.pk}", f"Payout {statement.number}", legs)])
        statement.status = PayoutStatement.Status.PAID
        statement.paid_at = timezone.now()
        statement.save(update_fields=["status", "paid_at"])
        audit_record(
            action="payout_paid", target=statement, actor=actor, actor_label=actor_label, message=f"net {statement.net}"
        )
    return statement
