"""The market overview operators see in the admin."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Sum
from django.utils import timezone

from billing.models import InvoiceLine
from broker.models import ComputeRequest, Contract
from core.money import CENT, ZERO
from core.timeutils import HOUR, floor_hour, month_of, period_bounds
from marketplace.models import GpuModel, Listing

HORIZON = timedelta(days=30)


@dataclass
class SegmentOverview:
    gpu_model: GpuModel
    listed_gpu_hours: int = 0
    sold_gpu_hours: int = 0
    avg_price_7d: Decimal | None = None
    avg_price_30d: Decimal | None = None
    open_requests: int = 0
    billed_this_month: Decimal = ZERO

    @property
    def sold_share(self) -> float:
        return self.sold_gpu_hours / self.listed_gpu_hours if self.listed_gpu_hours else 0.0


def _overlap_hours(start: datetime, end: datetime, lo: datetime, hi: datetime) -> int:
    a, b = max(start, lo), min(end, hi)
    return int((b - a) // HOUR) if b > a else 0


def market_overview(*, now: datetime | None = None) -> list[SegmentOverview]:
    """Per GPU model: capacity listed and sold over the next 30 days, recent contract prices,
    open requests and this month's billed total. A fixed number of queries."""
    now = now or timezone.now()
    lo = floor_hour(now)
    hi = lo + HORIZON
    rows = {model.pk: SegmentOverview(gpu_model=model) for model in GpuModel.objects.order_by("vendor", "name")}

    listings = Listing.objects.filter(status=Listing.Status.ACTIVE, starts_at__lt=hi, ends_at__gt=lo).values_list(
        "cluster__gpu_model_id", "node_count", "cluster__gpus_per_node", "starts_at", "ends_at"
    )
    for model_id, nodes, gpus_per_node, starts_at, ends_at in listings:
        rows[model_id].listed_gpu_hours += nodes * gpus_per_node * _overlap_hours(starts_at, ends_at, lo, hi)

    live = Contract.objects.serving_during(lo, hi)
    for model_id, gpus, starts_at, ends_at, released_at in live.values_list(
        "cluster__gpu_model_id", "gpu_count", "starts_at", "ends_at", "released_at"
    ):
        end = min(ends_at, released_at) if released_at else ends_at
        rows[model_id].sold_gpu_hours += gpus * _overlap_hours(starts_at, end, lo, hi)

    weighted: dict[tuple[int, int], list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    recent = Contract.objects.filter(created_at__gte=now - timedelta(days=30)).values_list(
        "cluster__gpu_model_id", "gpu_count", "starts_at", "ends_at", "price_per_gpu_hour", "created_at"
    )
    for model_id, gpus, starts_at, ends_at, price, created_at in recent:
        gpu_hours = Decimal(gpus * int((ends_at - starts_at) // HOUR))
        windows = (7, 30) if created_at >= now - timedelta(days=7) else (30,)
        for days in windows:
            weighted[model_id, days][0] += price * gpu_hours
            weighted[model_id, days][1] += gpu_hours
    for (model_id, days), (amount, gpu_hours) in weighted.items():
        if gpu_hours:
            setattr(rows[model_id], f"avg_price_{days}d", (amount / gpu_hours).quantize(Decimal("0.0001")))

    for model_id, count in (
        ComputeRequest.objects.filter(status=ComputeRequest.Status.OPEN)
        .values_list("gpu_model_id")
        .annotate(count=Count("id"))
        .order_by()
    ):
        rows[model_id].open_requests = count

    month_start, month_end = period_bounds(month_of(now))
    billed = (
        InvoiceLine.objects.non_draft()
        .filter(invoice__issued_at__gte=month_start, invoice__issued_at__lt=month_end)
        .values_list("contract__cluster__gpu_model_id")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    for model_id, total in billed:
        rows[model_id].billed_this_month = (total or ZERO).quantize(CENT)  # a sum of cent amounts
    return list(rows.values())
