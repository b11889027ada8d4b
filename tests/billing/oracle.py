"""The rating rules in plain Python: the oracle the property test checks every close against.

The application rates with one SQL statement (``billing.close_sql.RATE_LINES``). This is an
independent reading of the same rules, from the usage records themselves rather than from
the usage totals the trigger keeps:

- A committed contract bills the GPU-hours of its window (up to an early release) that
  fall in the month, times its price, whatever was used.
- A metered contract bills the GPU-seconds reported for the month / 3,600, times its price,
  never more than the contract could deliver in that month.
- Usage that arrives after its month was closed is billed as an adjustment line by the next
  close. Which close bills a usage record follows from the record's month and its id
  against each close's watermark (the highest record id that close saw): a record of month
  P is billed by the first close N >= P whose watermark covers it. Closes happen in order,
  so that close bills ``period == N and id <= W(N)`` plus ``period < N and W(N-1) < id <=
  W(N)``.
- Lines already on issued invoices are subtracted, so rating twice never bills twice.
- GPU-hours lost to failures and late delivery are credited (``sla_lines``, below).

All arithmetic is Decimal; each line's amount (and its platform-fee share) is rounded
half-up to cents once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db.models import Q, Sum
from django.utils import timezone

from billing.close_sql import RatedLine
from billing.models import InvoiceLine, UsageRecord
from broker.models import Contract
from core.money import ZERO, round_money
from core.timeutils import HOUR, period_bounds
from marketplace.models import BillingMode

SECONDS_PER_HOUR = Decimal(3600)


def capacity_hours(*, gpu_count: int, starts_at: datetime, service_end: datetime, period: date) -> Decimal:
    """GPU-hours a contract can deliver inside the month."""
    start, end = period_bounds(period)
    lo, hi = max(starts_at, start), min(service_end, end)
    if hi <= lo:
        return ZERO
    return Decimal(gpu_count * int((hi - lo) // HOUR))


def service_end(contract: Contract) -> datetime:
    """The end of a contract's window, or its early release."""
    return min(contract.ends_at, contract.released_at) if contract.released_at else contract.ends_at


@dataclass(frozen=True, slots=True)
class ContractTerms:
    id: int
    lab_id: int
    provider_id: int
    billing_mode: str
    gpu_count: int
    starts_at: datetime
    service_end: datetime  # ends_at, or the early release
    price: Decimal
    gpu_model: str

    def capacity_hours(self, period: date) -> Decimal:
        return capacity_hours(
            gpu_count=self.gpu_count, starts_at=self.starts_at, service_end=self.service_end, period=period
        )


_TERMS_FIELDS = (
    "id",
    "lab_id",
    "provider_id",
    "billing_mode",
    "gpu_count",
    "starts_at",
    "ends_at",
    "released_at",
    "price_per_gpu_hour",
    "cluster__gpu_model__name",
)


def _terms(rows) -> dict[int, ContractTerms]:
    out = {}
    for cid, lab_id, provider_id, mode, gpus, starts_at, ends_at, released_at, price, model in rows:
        out[cid] = ContractTerms(
            id=cid,
            lab_id=lab_id,
            provider_id=provider_id,
            billing_mode=mode,
            gpu_count=gpus,
            starts_at=starts_at,
            service_end=min(ends_at, released_at) if released_at else ends_at,
            price=price,
            gpu_model=model,
        )
    return out


def _already_billed(contracts, extra=()) -> dict[tuple[int, date], Decimal]:
    """GPU-hours already on issued invoices, per (contract, month)."""
    lines = InvoiceLine.objects.non_draft().filter(Q(contract_id__in=contracts) | Q(contract_id__in=list(extra)))
    lines = lines.exclude(kind=InvoiceLine.Kind.SLA_CREDIT)  # credits give hours back; they bill none
    sums = lines.order_by().values_list("contract_id", "service_period").annotate(Sum("quantity"))
    return {(contract_id, period): quantity for contract_id, period, quantity in sums}


def _fee_rate(*, depth: int, provider_rate: Decimal | None) -> Decimal:
    """The broker's share of a contract's lines: the resale fee on a resale's sales (a listing
    of depth 1 or more), else the seller's platform fee."""
    if depth > 0:
        return settings.RESALE_FEE_RATE
    return settings.PLATFORM_FEE_RATE if provider_rate is None else provider_rate


def _fee_rates(contract_ids) -> dict[int, Decimal]:
    rows = Contract.objects.filter(pk__in=list(contract_ids)).values_list(
        "id", "listing__depth", "provider__platform_fee_rate"
    )
    return {cid: _fee_rate(depth=depth, provider_rate=rate) for cid, depth, rate in rows}


def _line(terms: ContractTerms, kind: str, period: date, quantity: Decimal, fee_rates, label: str) -> RatedLine:
    amount = round_money(quantity * terms.price)
    rate = fee_rates[terms.id]
    return RatedLine(
        lab_id=terms.lab_id,
        contract_id=terms.id,
        provider_id=terms.provider_id,
        kind=kind,
        service_period=period,
        description=f"Contract {terms.id}: {terms.gpu_count} x {terms.gpu_model}, {label} {period:%Y-%m}",
        quantity=quantity,
        unit_price=terms.price,
        amount=amount,
        fee_rate=rate,
        fee_amount=round_money(amount * rate),
    )


def rate_period(*, period: date, usage_upto: int, late_after: int) -> list[RatedLine]:
    """The lines a close of ``period`` bills: ``usage_upto`` is its watermark, ``late_after``
    the previous close's."""
    start, end = period_bounds(period)
    overlapping = Contract.objects.filter(starts_at__lt=end, ends_at__gt=start).exclude(
        released_at__isnull=False, released_at__lte=start
    )
    usage = UsageRecord.objects.filter(Q(period=period) | Q(period__lt=period, id__gt=late_after), id__lte=usage_upto)
    # Committed contracts' usage is dropped below, without a join here.
    usage_sums = list(usage.order_by().values_list("contract_id", "period").annotate(Sum("gpu_seconds")))
    terms = _terms(overlapping.values_list(*_TERMS_FIELDS))
    missing = {cid for cid, _, _ in usage_sums} - terms.keys()
    if missing:
        terms |= _terms(Contract.objects.filter(pk__in=missing).values_list(*_TERMS_FIELDS))
    usage_sums = [row for row in usage_sums if terms[row[0]].billing_mode == BillingMode.METERED]
    billed = _already_billed(overlapping.values("id"), extra=missing)
    fee_rates = _fee_rates(terms)

    lines: list[RatedLine] = []
    for contract in sorted(terms.values(), key=lambda t: t.id):
        if contract.billing_mode != BillingMode.COMMITTED:
            continue
        quantity = contract.capacity_hours(period) - billed.get((contract.id, period), ZERO)
        if quantity > 0:
            lines.append(_line(contract, InvoiceLine.Kind.COMMITTED, period, quantity, fee_rates, "committed"))

    remaining_by_key = defaultdict(lambda: None)
    for cid, usage_period, seconds in sorted(usage_sums, key=lambda row: (row[1], row[0])):
        contract = terms[cid]
        key = (cid, usage_period)
        remaining = remaining_by_key[key]
        if remaining is None:
            remaining = contract.capacity_hours(usage_period) - billed.get(key, ZERO)
        quantity = min(seconds / SECONDS_PER_HOUR, max(remaining, ZERO))
        remaining_by_key[key] = remaining - quantity
        if quantity <= 0:
            continue
        if usage_period == period:
            lines.append(_line(contract, InvoiceLine.Kind.METERED, period, quantity, fee_rates, "metered usage"))
        else:
            line = _line(contract, InvoiceLine.Kind.ADJUSTMENT, usage_period, quantity, fee_rates, "late usage for")
            lines.append(line)
    return lines + sla_lines(period=period, now=timezone.now(), sales=lines)


# --- SLA credits ---------------------------------------------------------------------------
#
# An independent reading of billing.sla: for each contract, the hours of each allocation that
# fell in a failure of its node or in the late stretch (counted once), up to the month's end,
# times GPUs per node; owed = L x price x rate (the breach rate past the promise; metered
# contracts rate - 1), never more than the contract was billed net of credit notes, less what
# earlier credit lines gave back.


def _union(spans: list[tuple]) -> list[tuple]:
    merged: list[list] = []
    for lo, hi in sorted(spans, key=lambda span: span[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [tuple(span) for span in merged]


def lost_gpu_hours(contract: Contract, *, until: datetime) -> Decimal:
    from broker.models import Allocation, Incident

    never = datetime.max.replace(tzinfo=contract.starts_at.tzinfo)
    grace = timedelta(minutes=settings.DELIVERY_GRACE_MINUTES)
    late = None
    if contract.delivered_at is None and contract.delivery_late_at is not None:
        late = (contract.starts_at, never)
    elif contract.delivered_at is not None and contract.delivered_at >= contract.starts_at + grace:
        late = (contract.starts_at, contract.delivered_at)
    end = min(service_end(contract), until)
    seconds = Decimal(0)
    for allocation in Allocation.objects.filter(contract=contract):
        lo, hi = max(allocation.starts_at, contract.starts_at), min(allocation.ends_at, end)
        if hi <= lo:
            continue
        spans = [
            (incident.started_at, incident.resolved_at or never)
            for incident in Incident.objects.filter(node_id=allocation.node_id, kind=Incident.Kind.FAILURE)
        ]
        if late:
            spans.append(late)
        for start, stop in _union(spans):
            start, stop = max(start, lo), min(stop, hi)
            if stop > start:
                delta = stop - start
                seconds += Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000
    return seconds * contract.cluster.gpus_per_node / SECONDS_PER_HOUR


def _figure(value: Decimal) -> str:
    """A number as PostgreSQL's trim_scale prints it."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _net_billed(contract: Contract, sales: list[RatedLine]) -> Decimal:
    """What a contract was billed: its sales on issued invoices and in this close, less credit notes."""
    from billing.models import CreditNoteLine

    issued = InvoiceLine.objects.non_draft().filter(contract=contract).exclude(kind=InvoiceLine.Kind.SLA_CREDIT)
    reversed_ = CreditNoteLine.objects.filter(invoice_line__contract=contract)
    return (
        (issued.aggregate(total=Sum("amount"))["total"] or ZERO)
        - (reversed_.aggregate(total=Sum("amount"))["total"] or ZERO)
        + sum((line.amount for line in sales if line.contract_id == contract.pk), ZERO)
    )


def sla_lines(
    *, period: date, now: datetime, lab_id: int | None = None, sales: list[RatedLine] = ()
) -> list[RatedLine]:
    _, end = period_bounds(period)
    until = min(end, now)
    contracts = Contract.objects.filter(starts_at__lt=end, sla_availability__isnull=False).select_related(
        "cluster__gpu_model", "provider"
    )
    if lab_id is not None:
        contracts = contracts.filter(lab_id=lab_id)
    lines = []
    for contract in contracts.order_by("id"):
        lost = lost_gpu_hours(contract, until=until)
        if lost <= 0:
            continue
        hours = Decimal(int((service_end(contract) - contract.starts_at).total_seconds()) // 3600)
        breached = lost * 100 > contract.gpu_count * hours * (100 - contract.sla_availability)
        rate = (contract.sla_breach_credit_rate if breached else Decimal(1)) - (
            1 if contract.billing_mode == BillingMode.METERED else 0
        )
        credited = InvoiceLine.objects.non_draft().filter(contract=contract, kind=InvoiceLine.Kind.SLA_CREDIT)
        sums = credited.aggregate(quantity=Sum("quantity"), amount=Sum("amount"))
        owed = min(round_money(lost * contract.price_per_gpu_hour * rate), max(_net_billed(contract, sales), ZERO))
        already = -(sums["amount"] or ZERO)
        if owed <= already:
            continue
        amount = -(owed - already)
        fee_rate = _fee_rate(depth=contract.listing.depth, provider_rate=contract.provider.platform_fee_rate)
        note = (
            f" (below the {_figure(contract.sla_availability)}% promised: "
            f"{_figure(contract.sla_breach_credit_rate)} x price)"
            if breached
            else ""
        )
        lines.append(
            RatedLine(
                lab_id=contract.lab_id,
                contract_id=contract.pk,
                provider_id=contract.provider_id,
                kind=InvoiceLine.Kind.SLA_CREDIT,
                service_period=period,
                description=f"Contract {contract.pk}: {contract.gpu_count} x {contract.cluster.gpu_model.name}, "
                f"SLA credit for {_figure(lost.quantize(Decimal('0.0001'), ROUND_HALF_UP))} GPU-hours lost "
                f"through {period:%Y-%m}{note}",
                quantity=max(lost - (sums["quantity"] or ZERO), ZERO),
                unit_price=(contract.price_per_gpu_hour * rate).quantize(Decimal("0.0001"), ROUND_HALF_UP),
                amount=amount,
                fee_rate=fee_rate,
                fee_amount=round_money(amount * fee_rate),
            )
        )
    return lines
