"""Instant booking: a lab takes whole nodes of a listing at its price, now.

The whole booking is one SQL statement (``LISTING_BOOK``), its ``contract.created`` events
and their webhook deliveries included (through ``events_event_publish``, the function every
event is published by), so the contract and its events commit together in one round trip.
The statement locks the
listing row (bookers of a listing, and the matching engine, queue there), reads its terms,
picks free reserved nodes, adds the sale to the lab's exposure (``billing.credit``), and
writes the contract, its allocations and the listing's inventory-version bump only if the
terms allow it, enough nodes are free and the lab's credit limit covers it; the row it
returns says which case it was, and Python turns a refusal into the right error.

A booker that waited for the listing's lock decided on data older than the sale it waited
for: the exclusion constraint refuses any node sold in between, and the statement runs
again on fresh data. The lab's credit needs no second run: its exposure is kept on its row,
which the statement updates last, and PostgreSQL checks the update's condition on the
row's latest version, after any other sale to the lab has committed.
"""

import weakref
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, ProgrammingError, connection, transaction
from django.utils import timezone

from billing.credit import lab_exposure
from broker.free_spans import FREE_NODES
from broker.models import Contract
from broker.terms import contract_total, validate_size, validate_window
from core.errors import CapacityUnavailable, InvalidInput
from core.timeutils import HOUR
from events.models import EventType, WebhookDelivery, WebhookEndpoint
from events.services import webhooks_wake_after_commit
from marketplace.models import BillingMode, Cluster, GpuModel, Listing, Node, Organization

LISTING_BOOK = """
WITH terms AS (
    SELECT l.id, l.status, p.status AS provider_status, c.gpus_per_node, l.starts_at, l.ends_at,
           l.min_duration_hours, l.provider_id, l.cluster_id, l.price_per_gpu_hour, l.billing_mode,
           p.name AS provider_name, c.name AS cluster_name, c.region, c.interconnect, c.gpu_model_id, g.slug,
           l.depth
    FROM marketplace_listing l
    JOIN marketplace_cluster c ON c.id = l.cluster_id
    JOIN marketplace_gpumodel g ON g.id = c.gpu_model_id
    JOIN marketplace_organization p ON p.id = l.provider_id
    WHERE l.id = %(listing)s
    FOR UPDATE OF l
), allowed AS (
    SELECT * FROM terms
    WHERE status = %(listing_active)s AND provider_status <> %(provider_suspended)s
      AND mod(%(gpus)s, gpus_per_node) = 0
      AND starts_at <= %(starts_at)s AND ends_at >= %(ends_at)s
      AND min_duration_hours <= %(hours)s
), free AS ({free_nodes}
), claim AS (
    -- The sale's value added to the lab's exposure, if its credit limit allows. The condition
    -- is checked on the lab's latest row, after any other sale to the lab has committed.
    UPDATE marketplace_organization o
    SET exposure_committed = o.exposure_committed + CASE WHEN a.billing_mode = %(committed)s THEN a.value ELSE 0 END,
        exposure_metered = o.exposure_metered + CASE WHEN a.billing_mode = %(committed)s THEN 0 ELSE a.value END
    FROM (SELECT billing_mode, %(gpus)s * %(hours)s * price_per_gpu_hour AS value FROM allowed) a
    WHERE o.id = %(lab)s
      AND (o.credit_limit IS NULL
           OR o.exposure_committed + o.exposure_metered + o.exposure_unpaid + a.value <= o.credit_limit)
      AND (SELECT COUNT(*) FROM free) = %(gpus)s / (SELECT gpus_per_node FROM allowed)
    RETURNING o.id
), contract AS (
    INSERT INTO broker_contract (listing_id, lab_id, provider_id, cluster_id, gpu_count, node_count, starts_at,
        ends_at, price_per_gpu_hour, billing_mode, total_amount, status, cancel_reason, created_at)
    SELECT id, %(lab)s, provider_id, cluster_id, %(gpus)s, %(gpus)s / gpus_per_node, %(starts_at)s,
           %(ends_at)s, price_per_gpu_hour, billing_mode,
           -- round() is half away from zero: for these positive amounts, contract_total's half-up.
           CASE WHEN billing_mode = %(committed)s THEN round(%(gpus)s * %(hours)s * price_per_gpu_hour, 2) END,
           %(contract_scheduled)s, '', %(now)s
    FROM allowed WHERE EXISTS (SELECT 1 FROM claim)
    RETURNING id
), allocations AS (
    INSERT INTO broker_allocation (contract_id, listing_node_id, node_id, listing_id, starts_at, ends_at, depth)
    SELECT contract.id, free.id, free.node_id, %(listing)s, %(starts_at)s, %(ends_at)s, allowed.depth
    FROM contract, free, allowed
), bump AS (
    UPDATE marketplace_listing SET inventory_version = inventory_version + 1
    WHERE id = %(listing)s AND EXISTS (SELECT 1 FROM contract)
), published AS (
    -- contract.created to the lab and the provider, with their webhook deliveries, by the
    -- function every event goes through (events_event_publish); the snapshot is the one
    -- broker.handover.contract_data makes (a test holds the two to the same answer).
    SELECT max(e.delivery_count) AS deliveries
    FROM contract, allowed,
         LATERAL (SELECT json_build_object(
             'object', 'contract', 'id', contract.id, 'status', %(contract_scheduled)s, 'request_id', NULL,
             'listing_id', %(listing)s, 'lab_id', %(lab)s, 'provider_id', allowed.provider_id,
             'cluster_id', allowed.cluster_id, 'gpu_count', %(gpus)s, 'node_count', %(gpus)s / allowed.gpus_per_node,
             'billing_mode', allowed.billing_mode, 'price_per_gpu_hour', allowed.price_per_gpu_hour::text,
             'starts_at', to_char(%(starts_at)s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
             'ends_at', to_char(%(ends_at)s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))::text AS data) snapshot,
         events_event_publish(ARRAY[%(lab)s, allowed.provider_id], ARRAY[%(contract_created)s, %(contract_created)s],
                              ARRAY[snapshot.data, snapshot.data], ARRAY[NULL, NULL]::text[],
                              %(delivery_pending)s, %(endpoint_enabled)s, %(all_event_types)s) e
)
SELECT terms.status, terms.provider_status, terms.gpus_per_node, terms.starts_at, terms.ends_at,
       terms.min_duration_hours, terms.provider_id, terms.cluster_id, terms.price_per_gpu_hour, terms.billing_mode,
       (SELECT COUNT(*) FROM free), (SELECT id FROM contract),
       -- What the answer shows besides: the seller, the cluster, the nodes' hostnames (sorted as
       -- the contract's detail sorts them).
       terms.provider_name, terms.cluster_name, terms.region, terms.interconnect, terms.gpu_model_id, terms.slug,
       (SELECT array_agg(n.hostname ORDER BY n.hostname, n.id)
        FROM free JOIN marketplace_node n ON n.id = free.node_id),
       (SELECT deliveries FROM published)
FROM terms""".replace(
    "{free_nodes}",
    FREE_NODES.replace("%(limit)s", "coalesce(%(gpus)s / (SELECT gpus_per_node FROM allowed), 0)"),
)

# The statement is prepared once per database session and then run with EXECUTE: planning
# it costs the server more CPU than running it, and from the sixth execution PostgreSQL
# keeps one generic plan for the session (every lookup in it is by key, so the generic plan
# is the custom one). Its parameters, in order, with their types:
LISTING_BOOK_PARAMETERS = {
    "listing": "bigint",
    "lab": "bigint",
    "gpus": "integer",
    "hours": "integer",
    "starts_at": "timestamptz",
    "ends_at": "timestamptz",
    "now": "timestamptz",
    "listing_active": "text",
    "provider_suspended": "text",
    "node_in_service": "text",
    "committed": "text",
    "contract_scheduled": "text",
    "contract_created": "text",
    "delivery_pending": "text",
    "endpoint_enabled": "text",
    "all_event_types": "text",
}
_STATUSES = [
    Listing.Status.ACTIVE.value,
    Organization.Status.SUSPENDED.value,
    Node.Status.IN_SERVICE.value,
    BillingMode.COMMITTED.value,
    Contract.Status.SCHEDULED.value,
    EventType.CONTRACT_CREATED.value,
    WebhookDelivery.Status.PENDING.value,
    WebhookEndpoint.Status.ENABLED.value,
    WebhookEndpoint.ALL_TYPES,
]
_NAME = "broker_listing_book"
_LOCK_LISTING = "SELECT 1 FROM marketplace_listing WHERE id = %s FOR UPDATE"
_ATTEMPTS = 20


def _numbered(sql: str, names: Iterable[str]) -> str:
    for number, name in enumerate(names, start=1):
        sql = sql.replace(f"%({name})s", f"${number}")
    return sql


_PREPARE = f"PREPARE {_NAME} ({', '.join(LISTING_BOOK_PARAMETERS.values())}) AS " + _numbered(
    LISTING_BOOK, LISTING_BOOK_PARAMETERS
)
_EXECUTE = f"EXECUTE {_NAME} ({', '.join(['%s'] * len(LISTING_BOOK_PARAMETERS))})"
_INVALID_STATEMENT_NAME = "26000"  # the session lost its prepared statement (DISCARD ALL, DEALLOCATE)
# The database sessions (psycopg connections) in which the statement is prepared. A
# prepared statement outlives a rolled-back transaction, and dies with its session.
_prepared_in: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class _Booking:
    lab: Organization
    listing_id: int
    gpu_count: int
    starts_at: datetime
    hours: int

    @property
    def ends_at(self) -> datetime:
        return self.starts_at + self.hours * HOUR


def listing_book(
    *, lab: Organization, listing: Listing, gpu_count: int, starts_at: datetime, duration_hours: int
) -> Contract:
    """Book nodes of a listing at its price, now: a contract, or CapacityUnavailable.

    Bookers of one listing queue on its row lock (the matching engine takes the same lock);
    the database's exclusion constraint has the last word on every node.
    """
    if not lab.is_lab:
        raise InvalidInput("Only labs book capacity.")
    if listing.provider_id == lab.pk:
        raise InvalidInput("You cannot book your own listing.", fields={"listing": ["This is your own listing."]})
    validate_window(starts_at, duration_hours)
    validate_size(gpu_count, duration_hours)
    booking = _Booking(lab=lab, listing_id=listing.pk, gpu_count=gpu_count, starts_at=starts_at, hours=duration_hours)
    now = timezone.now()
    row = _run(booking, now)
    if row is None:
        raise CapacityUnavailable("This listing is not on offer.")
    status, provider_status, gpus_per_node, starts, ends, min_hours, provider_id, cluster_id, price, mode = row[:10]
    found, contract_id = row[10:12]
    node_count = _check_terms(
        booking,
        status=status,
        provider_status=provider_status,
        gpus_per_node=gpus_per_node,
        window=(starts, ends),
        min_hours=min_hours,
    )
    if found < node_count:
        raise CapacityUnavailable(
            f"Only {found * gpus_per_node} GPUs of this listing are free for that window.",
            fields={"gpu_count": [f"At most {found * gpus_per_node} available."]},
        )
    if contract_id is None:  # the terms allow it and the nodes are free: the lab's credit does not
        raise lab_exposure(booking.lab.pk).refusal(booking.gpu_count * booking.hours * price)
    provider_name, cluster_name, region, interconnect, gpu_model_id, gpu_model_slug, hostnames = row[12:19]
    # The seller and the cluster as the statement read them; any other field of theirs is
    # deferred, so reading it loads it, never a blank.
    cluster = _loaded(
        Cluster,
        id=cluster_id,
        name=cluster_name,
        region=region,
        interconnect=interconnect,
        gpus_per_node=gpus_per_node,
        gpu_model_id=gpu_model_id,
        provider_id=provider_id,
    )
    cluster.gpu_model = _loaded(GpuModel, id=gpu_model_id, slug=gpu_model_slug)
    contract = Contract(
        pk=contract_id,
        listing_id=booking.listing_id,
        lab=booking.lab,
        provider=_loaded(Organization, id=provider_id, name=provider_name),
        cluster=cluster,
        gpu_count=booking.gpu_count,
        node_count=node_count,
        starts_at=booking.starts_at,
        ends_at=booking.ends_at,
        price_per_gpu_hour=price,
        billing_mode=mode,
        total_amount=(
            contract_total(gpu_count=booking.gpu_count, hours=booking.hours, price_per_gpu_hour=price)
            if mode == BillingMode.COMMITTED
            else None
        ),
        status=Contract.Status.SCHEDULED,
        created_at=now,
    )
    contract._state.adding = False
    contract._state.db = connection.alias
    contract.node_hostnames = hostnames  # the answer needs no read of what was just written
    return contract


def _loaded(model, **values):
    """An instance of ``model`` as if read from the database with only these fields; the others
    are deferred (Model.from_db), so reading one loads it."""
    names = [field.attname for field in model._meta.concrete_fields if field.attname in values]
    return model.from_db(connection.alias, names, [values[name] for name in names])


def _run(booking: _Booking, now: datetime) -> tuple | None:
    """Run the statement until it is not refused by a sale made while it waited.

    The first attempt is the statement alone (and its events). A booker that waited for the
    listing's lock read the free spans as they were before the sale it waited for, and may
    pick a node that sale took; the exclusion constraint refuses it. Every later attempt
    takes the listing's lock first, in a statement of its own, so that the booking statement
    reads the spans after every sale before it: on a listing that many book at once, a booker
    retries at most once, instead of once per sale made while it waited.
    """
    params = [
        booking.listing_id,
        booking.lab.pk,
        booking.gpu_count,
        booking.hours,
        booking.starts_at,
        booking.ends_at,
        now,
        *_STATUSES,
    ]
    lock_first = False
    for attempt in range(_ATTEMPTS):
        try:
            # One statement commits by itself, the contract with its events; inside a caller's
            # transaction, or after the lock, a savepoint or a transaction keeps a refused
            # attempt from spoiling anything.
            atomic = lock_first or connection.in_atomic_block
            with transaction.atomic() if atomic else nullcontext(), connection.cursor() as cursor:
                if lock_first:
                    cursor.execute(_LOCK_LISTING, [booking.listing_id])
                session = connection.connection
                if session not in _prepared_in:
                    cursor.execute(_PREPARE)
                    _prepared_in.add(session)
                cursor.execute(_EXECUTE, params)
                row = cursor.fetchone()
            if row is not None:
                webhooks_wake_after_commit(row[19])
            return row
        except ProgrammingError as error:
            if getattr(error.__cause__, "sqlstate", None) != _INVALID_STATEMENT_NAME or attempt == _ATTEMPTS - 1:
                raise
            _prepared_in.discard(connection.connection)
        except IntegrityError:
            if attempt == _ATTEMPTS - 1:
                raise CapacityUnavailable("That capacity was just sold.")
            lock_first = True
    raise AssertionError("unreachable")


def _check_terms(booking: _Booking, *, status, provider_status, gpus_per_node, window, min_hours) -> int:
    """The listing's rules for this booking; returns the number of nodes it needs."""
    if status != Listing.Status.ACTIVE or provider_status == Organization.Status.SUSPENDED:
        raise CapacityUnavailable("This listing is not on offer.")
    if booking.gpu_count % gpus_per_node:
        raise InvalidInput(
            f"gpu_count must be a multiple of {gpus_per_node} (whole nodes).",
            fields={"gpu_count": [f"Must be a multiple of {gpus_per_node}."]},
        )
    if booking.starts_at < window[0] or booking.ends_at > window[1]:
        raise InvalidInput(
            "The booking must fall inside the listing's window.",
            fields={"starts_at": [f"The listing runs {window[0]:%Y-%m-%dT%H:%MZ} to {window[1]:%Y-%m-%dT%H:%MZ}."]},
        )
    if booking.hours < min_hours:
        raise InvalidInput(
            f"This listing sells at least {min_hours} hours.", fields={"duration_hours": [f"At least {min_hours}."]}
        )
    return booking.gpu_count // gpus_per_node
