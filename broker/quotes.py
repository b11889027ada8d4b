"""Quotes: what the matching engine would fill now for a lab's terms, at what price, and a
short time to take exactly that.

A quote is planned by the engine's own planner (``OrderBook.plan``, the one fill rule) on a
book of only the listings that could serve the terms and their nodes free for the window, so
quoting reads a few hundred rows, not the whole segment's book. It holds no capacity: anyone
may buy what it names meanwhile, and its listings may be repriced.

Accepting books each line of the quote with ``listing_book`` inside one transaction: all of
them, or none. The quote is claimed first (a conditional update, so of two acceptances one
books and the other finds it taken), its listings are locked in id order (the order every
writer locks listings in) and their prices compared with the quoted ones, and the lab's
credit is checked for the whole quote under its row's lock; only then is anything booked.
A line whose capacity was sold meanwhile refuses, and the rollback undoes the lines before it.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing.credit import lab_exposure
from broker.booking import listing_book
from broker.matching import Fill, OpenRequest, OrderBook, Unfilled
from broker.models import Quote
from broker.terms import contract_total, validate_size, validate_window
from core.errors import CapacityUnavailable, DomainError, InvalidInput, InvalidTransition, NotAllowed
from core.money import PRICE_PLACES, max_price_per_gpu_hour
from core.timeutils import HOUR
from marketplace.models import BillingMode, GpuModel, Listing, Organization

_PRICE_QUANTUM = Decimal(1).scaleb(-PRICE_PLACES)


@dataclass(frozen=True, slots=True)
class QuoteLine:
    listing_id: int
    gpu_count: int
    price_per_gpu_hour: Decimal


def quote_lines(quote: Quote) -> list[QuoteLine]:
    """The quote's lines as stored (``Quote.lines``), prices as Decimals."""
    return [
        QuoteLine(line["listing_id"], line["gpu_count"], Decimal(line["price_per_gpu_hour"])) for line in quote.lines
    ]


def quote_status(quote: Quote, *, now: datetime | None = None) -> str:
    """accepted, expired (not accepted in time), or open (it may still be accepted)."""
    if quote.accepted_at is not None:
        return "accepted"
    return "open" if (now or timezone.now()) < quote.expires_at else "expired"


def quote_list(*, lab: Organization) -> QuerySet[Quote]:
    """The lab's quotes, newest first; nobody else sees them."""
    return Quote.objects.filter(lab=lab).select_related("gpu_model").order_by("-created_at", "-id")


# --- Quoting -------------------------------------------------------------------------------


def quote_create(
    *,
    lab: Organization,
    gpu_model: GpuModel,
    gpu_count: int,
    starts_at: datetime,
    duration_hours: int,
    billing_mode: str,
    colocated: bool = True,
    region: str = "",
) -> Quote:
    """Quote what the matching engine would fill now for these terms, valid for
    QUOTE_TTL_SECONDS (or until the start, if sooner). It holds no capacity.

    Refused with capacity_unavailable (why, in the engine's words, and ``fields.reason``) when
    nothing fills it now, and with credit_limit_exceeded when the lab's credit limit would not
    let it accept the quote.
    """
    if not lab.is_lab:
        raise InvalidInput("Only labs ask for quotes.")
    validate_window(starts_at, duration_hours)
    validate_size(gpu_count, duration_hours)
    if billing_mode not in BillingMode.values:
        raise InvalidInput("Unknown billing mode.", fields={"billing_mode": ["Use committed or metered."]})
    now = timezone.now()
    request = OpenRequest(
        pk=0,  # a hypothetical request: nothing is written for it
        lab_id=lab.pk,
        gpu_count=gpu_count,
        starts_at=starts_at,
        ends_at=starts_at + duration_hours * HOUR,
        duration_hours=duration_hours,
        max_price_per_gpu_hour=max_price_per_gpu_hour(),
        billing_mode=billing_mode,
        colocated=colocated,
        region=region,
        interconnect="",
        unfilled_reason="",
        unfilled_detail="",
        fill_price_now=None,
    )
    book = OrderBook(gpu_model.pk)
    book.load_for(request)
    fill = book.plan(request, priced=False)
    if fill is None:
        why = _explained(book, request)
        raise CapacityUnavailable(why.detail, fields={"reason": [why.reason]})
    lines = _lines(fill)
    exposure = lab_exposure(lab.pk)
    value = _value(lines, duration_hours)
    if not exposure.allows(value):
        raise exposure.refusal(value, what="Accepting this quote")
    return Quote.objects.create(
        lab=lab,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        starts_at=starts_at,
        duration_hours=duration_hours,
        ends_at=request.ends_at,
        colocated=colocated,
        region=region,
        billing_mode=billing_mode,
        lines=[
            {
                "listing_id": line.listing_id,
                "gpu_count": line.gpu_count,
                "price_per_gpu_hour": str(line.price_per_gpu_hour),
            }
            for line in lines
        ],
        total_amount=_total(lines, duration_hours),
        # What a GPU-hour of the fill costs on average, to the price's places.
        average_price_per_gpu_hour=(value / (gpu_count * duration_hours)).quantize(
            _PRICE_QUANTUM, rounding=ROUND_HALF_UP
        ),
        # A booking cannot start in the past: a quote is not accepted after its start.
        expires_at=min(now + timedelta(seconds=settings.QUOTE_TTL_SECONDS), starts_at),
    )


def _value(lines: list[QuoteLine], hours: int) -> Decimal:
    """What the lines cost over ``hours``, unrounded: what a sale adds to the lab's exposure
    (``billing.credit``)."""
    return sum((line.gpu_count * hours * line.price_per_gpu_hour for line in lines), Decimal(0))


def _total(lines: list[QuoteLine], hours: int) -> Decimal:
    """What the lines' contracts cost, each to the cent as its contract's total is (a metered
    line's is its ceiling: every GPU-hour used)."""
    return sum(
        (
            contract_total(gpu_count=line.gpu_count, hours=hours, price_per_gpu_hour=line.price_per_gpu_hour)
            for line in lines
        ),
        Decimal(0),
    )


def _lines(fill: Fill) -> list[QuoteLine]:
    return [QuoteLine(listing.id, len(nodes) * listing.gpus_per_node, listing.price) for listing, nodes in fill.parts]


def _explained(book: OrderBook, request: OpenRequest) -> Unfilled:
    """Why the engine leaves the request unfilled, on the listings' whole inventory."""
    book.load_inventory()
    return book.explain(request)


# --- Accepting -----------------------------------------------------------------------------


def quote_accept(*, quote: Quote, lab: Organization) -> Quote:
    """Book exactly what the quote says, at its prices: every line, or nothing.

    Refused (409, nothing booked) when the quote was accepted already (quote_accepted) or has
    expired (quote_expired), when a listing's price changed since (quote_price_changed), when a
    line's capacity was sold or its listing is no longer on offer (capacity_unavailable), or
    when the quote would take the lab past its credit limit (credit_limit_exceeded).
    """
    if quote.lab_id != lab.pk:
        raise NotAllowed("Only the lab that asked for a quote may accept it.")
    lines = quote_lines(quote)
    with transaction.atomic():
        now = timezone.now()
        # Claimed first: a second acceptance waits here for the first to commit or roll back,
        # then finds the quote taken (or free again, if the first booked nothing).
        claimed = Quote.objects.filter(pk=quote.pk, accepted_at__isnull=True, expires_at__gt=now).update(
            accepted_at=now
        )
        if not claimed:
            raise _not_acceptable(Quote.objects.get(pk=quote.pk))
        providers = _lock_listings(lines)
        exposure = lab_exposure(lab.pk, lock=True)
        value = _value(lines, quote.duration_hours)
        if not exposure.allows(value):
            raise exposure.refusal(value, what="Accepting this quote")
        contract_ids = []
        for line in lines:
            try:
                contract = listing_book(
                    lab=lab,
                    listing=Listing(pk=line.listing_id, provider_id=providers[line.listing_id]),
                    gpu_count=line.gpu_count,
                    starts_at=quote.starts_at,
                    duration_hours=quote.duration_hours,
                )
            except CapacityUnavailable as refused:
                raise CapacityUnavailable(
                    f"Listing {line.listing_id}: {refused.message} Nothing was booked; ask for a new quote.",
                    fields={"listing_id": [str(line.listing_id)]},
                ) from refused
            contract_ids.append(contract.pk)
        Quote.objects.filter(pk=quote.pk).update(contract_ids=contract_ids)
    quote.accepted_at = now
    quote.contract_ids = contract_ids
    return quote


def _not_acceptable(quote: Quote) -> DomainError:
    if quote.accepted_at is not None:
        return InvalidTransition(
            f"This quote was accepted at {quote.accepted_at:%Y-%m-%dT%H:%M:%SZ}; its contracts are "
            f"{', '.join(map(str, quote.contract_ids))}.",
            code="quote_accepted",
        )
    return InvalidTransition(
        f"This quote expired at {quote.expires_at:%Y-%m-%dT%H:%M:%SZ}; ask for a new one.", code="quote_expired"
    )


def _lock_listings(lines: list[QuoteLine]) -> dict[int, int]:
    """Lock the quote's listings in id order and hold each to its quoted price; their providers."""
    rows = (
        Listing.objects.select_for_update()
        .filter(pk__in=[line.listing_id for line in lines])
        .order_by("pk")
        .values_list("pk", "provider_id", "price_per_gpu_hour")
    )
    prices, providers = {}, {}
    for listing_id, provider_id, price in rows:
        prices[listing_id], providers[listing_id] = price, provider_id
    gone = [line.listing_id for line in lines if line.listing_id not in prices]
    if gone:
        raise CapacityUnavailable(
            f"Listing {gone[0]} is no longer on offer. Nothing was booked; ask for a new quote.",
            fields={"listing_id": [str(gone[0])]},
        )
    changed = [line for line in lines if prices.get(line.listing_id) != line.price_per_gpu_hour]
    if changed:
        raise DomainError(
            "The price of "
            + "; ".join(
                f"listing {line.listing_id} is {prices[line.listing_id]} per GPU-hour, quoted at "
                f"{line.price_per_gpu_hour}"
                for line in changed
            )
            + ". Nothing was booked; ask for a new quote.",
            fields={"listing_id": [str(line.listing_id) for line in changed]},
            code="quote_price_changed",
        )
    return providers
