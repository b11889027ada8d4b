import contextlib
import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from billing.credit import lab_exposure, lab_exposures_refresh
from billing.services import contract_credit_invoiced
from broker.handover import CONTRACT_COLUMNS, REQUEST_COLUMNS, contract_data, contract_notices, request_data
from broker.matching import segment_mark_pending, segment_unmark_pending
from broker.models import Allocation, ComputeRequest, Contract
from broker.resale import resales_end_before_release
from broker.tasks import match_segment
from broker.terms import contract_total, validate_size, validate_window
from core.errors import InvalidInput, InvalidTransition, NotAllowed
from core.money import validate_price
from core.services import audit_record
from core.timeutils import HOUR, iso_utc, next_hour
from events.models import EventType
from events.services import Notice, events_publish
from marketplace.models import BillingMode, GpuModel, Organization
from marketplace.services import listing_inventory_changed

logger = logging.getLogger(__name__)


def segment_match_queue(*, gpu_model_id: int, force: bool = False) -> None:
    """Queue a matching run of the segment, unless one is already pending.

    On workers a segment has at most one run pending: the first request marks the segment
    (in Redis) and queues a run; those committed before that run starts find the mark and
    queue nothing, since the run clears the mark before it reads the open requests. In-process
    (eager) the run happens now. ``force`` (the sweep, an operator) queues one regardless.
    """
    if match_segment.app.conf.task_always_eager:
        match_segment.delay(gpu_model_id)
        return
    if not segment_mark_pending(gpu_model_id=gpu_model_id, force=force):
        return
    try:
        match_segment.delay(gpu_model_id)
    except Exception:
        with contextlib.suppress(Exception):  # best effort: Redis is likely down too
            segment_unmark_pending(gpu_model_id=gpu_model_id)
        raise


def _enqueue_matching(*, gpu_model_id: int, request_id: int, force: bool = False) -> None:
    """Once the transaction commits, queue matching of the request's segment.

    A failure to queue (Redis unreachable) is logged, never raised: the request is committed,
    and a 500 now would make the client retry and buy the same capacity twice. The periodic
    sweep (``rematch_open_requests``) matches it.
    """

    def enqueue() -> None:
        try:
            segment_match_queue(gpu_model_id=gpu_model_id, force=force)
        except Exception:
            logger.exception(
                "could not queue matching for compute request %s (segment %s); the periodic sweep will match it",
                request_id,
                gpu_model_id,
            )

    transaction.on_commit(enqueue)


# --- Compute requests --------------------------------------------------------------------


def compute_request_create(
    *,
    lab: Organization,
    gpu_model: GpuModel,
    gpu_count: int,
    starts_at: datetime,
    duration_hours: int,
    max_price_per_gpu_hour: Decimal,
    billing_mode: str,
    colocated: bool = True,
    region: str = "",
    interconnect: str = "",
) -> ComputeRequest:
    """Record a lab's order; the matching engine picks it up once it commits.

    Refused (credit_limit_exceeded) when, at its most (all its GPU-hours at its highest
    price), it would take the lab's exposure past its credit limit. Placed, it may still
    wait: the engine fills it only while the limit covers what the fill costs.
    """
    if not lab.is_lab:
        raise InvalidInput("Only labs request compute.")
    validate_window(starts_at, duration_hours)
    validate_size(gpu_count, duration_hours)
    validate_price(max_price_per_gpu_hour, field="max_price_per_gpu_hour")
    if billing_mode not in BillingMode.values:
        raise InvalidInput("Unknown billing mode.", fields={"billing_mode": ["Use committed or metered."]})
    most = contract_total(gpu_count=gpu_count, hours=duration_hours, price_per_gpu_hour=max_price_per_gpu_hour)
    with transaction.atomic():
        exposure = lab_exposure(lab.pk, lock=True)
        if not exposure.allows(most):
            raise exposure.refusal(most, what="This request, at its maximum price,")
        request = ComputeRequest.objects.create(
            lab=lab,
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            starts_at=starts_at,
            duration_hours=duration_hours,
            ends_at=starts_at + duration_hours * HOUR,
            max_price_per_gpu_hour=max_price_per_gpu_hour,
            billing_mode=billing_mode,
            colocated=colocated,
            region=region,
            interconnect=interconnect,
        )
        _enqueue_matching(gpu_model_id=gpu_model.pk, request_id=request.pk)
    return request


def compute_request_cancel(*, request: ComputeRequest) -> ComputeRequest:
    """Cancel an open request. A filled one has contracts; it cannot be cancelled."""
    with transaction.atomic():
        request = ComputeRequest.objects.select_for_update().get(pk=request.pk)
        if request.status == ComputeRequest.Status.CANCELLED:
            return request
        if request.status != ComputeRequest.Status.OPEN:
            raise InvalidTransition(f"Only an open request can be cancelled; this one is {request.status}.")
        request.status = ComputeRequest.Status.CANCELLED
        request.closed_at = timezone.now()
        request.save(update_fields=["status", "closed_at"])
    return request


def compute_request_rematch(*, request: ComputeRequest, actor=None, actor_label: str = "") -> None:
    """Queue the matching of the request's market segment (an operator's nudge)."""
    if request.status != ComputeRequest.Status.OPEN:
        raise InvalidTransition(f"Only an open request is matched; this one is {request.status}.")
    audit_record(action="request_rematched", target=request, actor=actor, actor_label=actor_label)
    _enqueue_matching(gpu_model_id=request.gpu_model_id, request_id=request.pk, force=True)


_EXPIRE_REQUESTS = """
UPDATE broker_computerequest SET status = %(expired)s, closed_at = %(now)s
WHERE status = %(open)s AND starts_at < %(now)s
RETURNING {columns}
""".replace("{columns}", ", ".join(REQUEST_COLUMNS))


def compute_requests_expire(*, now: datetime | None = None) -> int:
    """Expire open requests whose start has passed: filled later, they would charge for time
    already past. One statement, and one more for their labs' events; safe to run twice."""
    now = now or timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _EXPIRE_REQUESTS,
            {"expired": ComputeRequest.Status.EXPIRED.value, "open": ComputeRequest.Status.OPEN.value, "now": now},
        )
        rows = cursor.fetchall()
        lab = REQUEST_COLUMNS.index("lab_id")
        events_publish(
            Notice(
                row[lab],
                EventType.COMPUTE_REQUEST_EXPIRED.value,
                request_data(row),
                f"compute_request.expired:{row[0]}",
            )
            for row in rows
        )
    return len(rows)


# --- Contract lifecycle --------------------------------------------------------------------

LIVE_STATUSES = (Contract.Status.SCHEDULED, Contract.Status.ACTIVE)


def _release_from(contract: Contract) -> datetime:
    """Nodes are freed from the next whole hour (or the start, if it has not begun)."""
    return min(max(next_hour(), contract.starts_at), contract.ends_at)


def _end_early(contract: Contract, status: str, **fields) -> datetime:
    """Close a locked live contract before its end: its nodes are free from the release hour."""
    release_at = _release_from(contract)
    contract.status = status
    contract.released_at = release_at
    for name, value in fields.items():
        setattr(contract, name, value)
    contract.save(update_fields=["status", "released_at", *fields])
    Allocation.objects.filter(contract=contract, ends_at__gt=release_at).update(ends_at=release_at)
    Allocation.objects.filter(contract=contract, starts_at__gt=F("ends_at")).update(ends_at=F("starts_at"))
    listing_inventory_changed(listing_ids=[contract.listing_id])
    lab_exposures_refresh([contract.lab_id])  # the hours released no longer count
    return release_at


def contract_terminate(*, contract: Contract, lab: Organization) -> Contract:
    """Release a metered contract early; its nodes are free from the next whole hour."""
    with transaction.atomic():
        contract = Contract.objects.select_for_update().get(pk=contract.pk)
        if contract.lab_id != lab.pk:
            raise NotAllowed("Only the lab that bought a contract may terminate it; you sold this one.")
        if contract.billing_mode != BillingMode.METERED:
            raise InvalidTransition(
                "A committed contract is paid in full and cannot be terminated; an operator may cancel it.",
                code="committed_contract",
            )
        if contract.status == Contract.Status.TERMINATED:
            return contract
        if contract.status not in LIVE_STATUSES:
            raise InvalidTransition(f"A {contract.status} contract cannot be terminated.")
        release_at = _end_early(contract, Contract.Status.TERMINATED)
        _publish_ended(contract, EventType.CONTRACT_TERMINATED, released_at=release_at)
    return contract


def contract_cancel(*, contract: Contract, reason: str, actor=None, actor_label: str = "") -> Contract:
    """An operator's cancellation, with a reason.

    Its nodes are free from the next whole hour; whatever of it was invoiced and is unpaid
    is credited by a credit note; later months bill nothing past the release.
    """
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("A cancellation needs a reason.", fields={"reason": ["This field is required."]})
    with transaction.atomic():
        contract = Contract.objects.select_for_update().get(pk=contract.pk)
        if contract.status == Contract.Status.CANCELLED:
            return contract
        if contract.status not in LIVE_STATUSES:
            raise InvalidTransition(f"A {contract.status} contract cannot be cancelled.")
        resales_end_before_release(contract=contract, release_at=_release_from(contract), actor_label=actor_label)
        release_at = _end_early(contract, Contract.Status.CANCELLED, cancel_reason=reason)
        _publish_ended(contract, EventType.CONTRACT_CANCELLED, released_at=release_at, cancel_reason=reason)
        credit_notes = contract_credit_invoiced(
            contract=contract,
            reason=f"Contract {contract.pk} cancelled: {reason}",
            actor=actor,
            actor_label=actor_label,
        )
        credited = ", ".join(note.number for note in credit_notes) or "nothing invoiced"
        audit_record(
            action="contract_cancelled",
            target=contract,
            actor=actor,
            actor_label=actor_label,
            message=f"{reason} (nodes free from {release_at:%Y-%m-%dT%H:%MZ}; credited: {credited})",
        )
    return contract


def _publish_ended(contract: Contract, type: str, **about) -> None:
    data = contract_data(contract, **{name: _iso(value) for name, value in about.items()})
    events_publish(contract_notices(type, [(data, contract.lab_id, contract.provider_id)]))


def _iso(value):
    return iso_utc(value) if isinstance(value, datetime) else value


_COLUMNS = ", ".join(CONTRACT_COLUMNS)
# Each statement of the lifecycle changes its contracts and returns what their events say.
# Undelivered DELIVERY_GRACE_MINUTES after its start: late (the partial index
# contract_awaiting_delivery holds only the undelivered, unmarked contracts).
_MARK_LATE = """
UPDATE broker_contract SET delivery_late_at = %(now)s
WHERE delivered_at IS NULL AND delivery_late_at IS NULL AND starts_at <= %(late_from)s AND status = ANY(%(live)s)
RETURNING {columns}
""".replace("{columns}", _COLUMNS)
_COMPLETE = """
UPDATE broker_contract SET status = %(completed)s
WHERE status = ANY(%(live)s) AND ends_at <= %(now)s
RETURNING {columns}
""".replace("{columns}", _COLUMNS)
_ACTIVATE = """
UPDATE broker_contract SET status = %(active)s
WHERE status = %(scheduled)s AND starts_at <= %(now)s AND ends_at > %(now)s
RETURNING {columns}
""".replace("{columns}", _COLUMNS)
# Active contracts ending within ENDING_NOTICE that have not been told so: the event's own
# dedupe key says whether they were (both parties' events are written together).
ENDING_NOTICE = 24 * HOUR
_ENDING = """
SELECT {columns} FROM broker_contract c
WHERE status = %(active)s AND ends_at > %(now)s AND ends_at <= %(ending_by)s
  AND NOT EXISTS (
      SELECT 1 FROM events_event e
      WHERE e.dedupe_key = %(ending)s || ':' || c.id || ':' || c.lab_id
  )
""".replace("{columns}", _COLUMNS)


def contracts_advance(*, now: datetime | None = None) -> dict[str, int]:
    """Mark late deliveries, finish and start contracts by the clock, and tell contracts
    ending within a day, each in one statement; their parties' events in one more. Running
    it twice changes nothing and publishes nothing new (every event has its dedupe key)."""
    now = now or timezone.now()
    params = {
        "now": now,
        "late_from": now - timedelta(minutes=settings.DELIVERY_GRACE_MINUTES),
        "ending_by": now + ENDING_NOTICE,
        "live": [status.value for status in LIVE_STATUSES],
        "scheduled": Contract.Status.SCHEDULED.value,
        "active": Contract.Status.ACTIVE.value,
        "completed": Contract.Status.COMPLETED.value,
        "ending": EventType.CONTRACT_ENDING.value,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        changed = {}
        # Late first: a contract that also ends in this run was still undelivered when live.
        for name, statement in (
            ("late", _MARK_LATE),
            ("completed", _COMPLETE),
            ("activated", _ACTIVATE),
            ("ending", _ENDING),
        ):
            cursor.execute(statement, params)
            changed[name] = cursor.fetchall()
        _publish_advanced(changed, now)
    return {"activated": len(changed["activated"]), "completed": len(changed["completed"])}


def _publish_advanced(changed: dict[str, list[tuple]], now: datetime) -> None:
    types = {
        "late": (EventType.CONTRACT_DELIVERY_LATE, {"delivery_late_at": _iso(now)}),
        "completed": (EventType.CONTRACT_COMPLETED, {}),
        "activated": (EventType.CONTRACT_ACTIVATED, {}),
        "ending": (EventType.CONTRACT_ENDING, {}),
    }
    lab, provider = CONTRACT_COLUMNS.index("lab_id"), CONTRACT_COLUMNS.index("provider_id")
    notices = []
    for name, rows in changed.items():
        type, about = types[name]
        notices += contract_notices(type, ((contract_data(row, **about), row[lab], row[provider]) for row in rows))
    events_publish(notices)
