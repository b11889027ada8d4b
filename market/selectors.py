"""Market data reads: the order book, the tape of trades and the daily price index.

All of it is anonymous: what is read here names no organization, listing or contract.
"""

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TypedDict

from django.db import connection
from django.utils import timezone

from broker.models import ComputeRequest, Contract
from core.money import round_money
from core.timeutils import current_hour
from market.models import PriceIndex
from marketplace.models import GpuModel, Listing
from marketplace.selectors import LISTING_AVAILABILITY_SQL, ListingQuery, listing_search_parameters

# What a trade is, once for the tape and the price index: a contract signed (its created_at),
# not cancelled, with its GPUs, its hours as signed (an early release does not change what was
# traded), and whether it was a resale (sold from a listing of bought capacity, depth > 0).
TRADES = """
    SELECT c.id, c.created_at AS signed_at, c.price_per_gpu_hour, c.gpu_count,
           (EXTRACT(EPOCH FROM c.ends_at - c.starts_at) / 3600)::bigint AS hours,
           c.starts_at, c.billing_mode, l.depth > 0 AS resale, cl.gpu_model_id
    FROM broker_contract c
    JOIN marketplace_cluster cl ON cl.id = c.cluster_id
    JOIN marketplace_listing l ON l.id = c.listing_id
    WHERE c.status <> %(cancelled)s
"""


def trades_parameters() -> dict:
    """TRADES's parameters."""
    return {"cancelled": Contract.Status.CANCELLED}


# --- The order book -----------------------------------------------------------------------

# Asks: the listings a lab's search finds for the window (LISTING_AVAILABILITY_SQL, the first
# part of the search's statement), their GPUs free for the whole window added up by price. One
# statement.
ASK_LEVELS = "".join(
    (
        LISTING_AVAILABILITY_SQL,
        """
    SELECT m.price_per_gpu_hour, SUM(m.available_nodes * m.gpus_per_node) AS gpus, COUNT(*) AS orders
    FROM matching m
    GROUP BY m.price_per_gpu_hour
    ORDER BY m.price_per_gpu_hour
    LIMIT %(levels)s
""",
    )
)

# Bids: open compute requests for the model that want GPUs for some hour of the window and can
# still fill (their start not yet begun), in the region asked or in any region, added up by
# their limit price, best (highest) first.
BID_LEVELS = """
    SELECT r.max_price_per_gpu_hour AS price_per_gpu_hour, SUM(r.gpu_count) AS gpus, COUNT(*) AS orders
    FROM broker_computerequest r
    WHERE r.status = %(open)s AND r.gpu_model_id = %(gpu_model_id)s
      AND r.starts_at < %(ends_at)s AND r.ends_at > %(starts_at)s AND r.starts_at >= %(now)s
      AND (%(region)s::text IS NULL OR r.region IN (%(region)s, %(any_region)s))
    GROUP BY r.max_price_per_gpu_hour
    ORDER BY r.max_price_per_gpu_hour DESC
    LIMIT %(levels)s
"""


class Level(TypedDict):
    price_per_gpu_hour: Decimal
    gpus: int
    orders: int


@dataclass(frozen=True)
class Book:
    asks: list[Level]
    bids: list[Level]


def _levels(sql: str, parameters: dict) -> list[Level]:
    with connection.cursor() as cursor:
        cursor.execute(sql, parameters)
        return [{"price_per_gpu_hour": price, "gpus": int(gpus), "orders": orders} for price, gpus, orders in cursor]


def market_book(
    *, gpu_model: GpuModel, starts_at: datetime, ends_at: datetime, region: str | None, levels: int
) -> Book:
    """The order book of a GPU model for the window [starts_at, ends_at), the best ``levels``
    prices of each side.

    Asks: GPUs free for the whole window on active listings, by price, cheapest first; a listing
    counts as a lab's search counts it (``listing_search``: it covers the window, allows its
    length, has a whole node free). Bids: the GPUs open compute requests want for an hour of the
    window, by limit price, highest first. Two statements."""
    query = ListingQuery(
        gpu_model=gpu_model.slug,
        region=region,
        starts_at=starts_at,
        ends_at=ends_at,
        statuses=(Listing.Status.ACTIVE,),
        deliverable_only=True,
    )
    search = listing_search_parameters(query=query, now_hour=current_hour(), limit=None, offset=0)  # no page
    asks = _levels(ASK_LEVELS, search | {"levels": levels})
    bids = _levels(
        BID_LEVELS,
        {
            "open": ComputeRequest.Status.OPEN,
            "gpu_model_id": gpu_model.pk,
            "starts_at": starts_at,
            "ends_at": ends_at,
            "now": timezone.now(),
            "region": region,
            "any_region": "",
            "levels": levels,
        },
    )
    return Book(asks=asks, bids=bids)


# --- The tape -------------------------------------------------------------------------------

# A page of a model's trades signed since a moment, newest first, and how many there are in
# all: one statement (a page past the last is one row, of the total alone).
TRADE_PAGE = "".join(
    (
        "WITH trades AS (",
        TRADES,
        """), matching AS (
        SELECT t.* FROM trades t WHERE t.gpu_model_id = %(gpu_model_id)s AND t.signed_at >= %(since)s
    )
    SELECT total.trades AS total, page.*
    FROM (SELECT COUNT(*) AS trades FROM matching) total
    LEFT JOIN (
        SELECT m.signed_at, m.price_per_gpu_hour, m.gpu_count, m.hours, m.starts_at, m.billing_mode, m.resale, m.id
        FROM matching m
        ORDER BY m.signed_at DESC, m.id DESC
        LIMIT %(limit)s OFFSET %(offset)s
    ) page ON TRUE
    ORDER BY page.signed_at DESC, page.id DESC
""",
    )
)


class TradeRow(TypedDict):
    signed_at: datetime
    price_per_gpu_hour: Decimal
    gpu_count: int
    hours: int
    starts_at: datetime
    billing_mode: str
    resale: bool


def trade_list(*, gpu_model: GpuModel, since: datetime, limit: int, offset: int) -> tuple[list[TradeRow], int]:
    """A page of the model's trades signed at or after ``since``, newest first (by signing time,
    then order of writing), and how many there are in all. No party or contract is named."""
    with connection.cursor() as cursor:
        cursor.execute(
            TRADE_PAGE,
            trades_parameters() | {"gpu_model_id": gpu_model.pk, "since": since, "limit": limit, "offset": offset},
        )
        rows = cursor.fetchall()
    total = rows[0][0]
    page = [
        TradeRow(
            signed_at=signed_at,
            price_per_gpu_hour=price,
            gpu_count=gpu_count,
            hours=hours,
            starts_at=starts_at,
            billing_mode=billing_mode,
            resale=resale,
        )
        for _total, signed_at, price, gpu_count, hours, starts_at, billing_mode, resale, _id in rows
        if signed_at is not None
    ]
    return page, total


# --- The daily price index ------------------------------------------------------------------

# Each computed day of [first, last] with the model's figures; a day computed with no trade of
# the model has none.
INDEX_DAYS = """
    SELECT d.day, p.open, p.high, p.low, p.close, p.notional, p.volume_gpu_hours, p.trades
    FROM market_priceindexday d
    LEFT JOIN market_priceindex p ON p.day = d.day AND p.gpu_model_id = %(gpu_model_id)s
    WHERE d.day BETWEEN %(first)s AND %(last)s
    ORDER BY d.day
"""


class IndexDay(TypedDict):
    day: date
    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    close: Decimal | None
    vwap: Decimal | None
    volume_gpu_hours: int
    trades: int


def vwap(*, notional: Decimal, volume_gpu_hours: int) -> Decimal:
    """The volume-weighted price per GPU-hour: notional / GPU-hours, rounded half-up to cents."""
    return round_money(notional / volume_gpu_hours)


def price_index_days(*, gpu_model: GpuModel, first: date, last: date) -> list[IndexDay]:
    """The model's daily index for each day of [first, last] already computed, oldest first.
    Days not computed yet (today, or days the job has not reached) are left out; a day computed
    with no trade of the model has volume 0 and no prices."""
    with connection.cursor() as cursor:
        cursor.execute(INDEX_DAYS, {"gpu_model_id": gpu_model.pk, "first": first, "last": last})
        rows = cursor.fetchall()
    return [
        IndexDay(
            day=day,
            open=open_,
            high=high,
            low=low,
            close=close,
            vwap=None if trades is None else vwap(notional=notional, volume_gpu_hours=volume),
            volume_gpu_hours=volume or 0,
            trades=trades or 0,
        )
        for day, open_, high, low, close, notional, volume, trades in rows
    ]


@dataclass(frozen=True)
class IndexSeries:
    """A GPU model's traded days of a stretch, oldest first: (day, VWAP, GPU-hours)."""

    gpu_model: GpuModel
    days: list[tuple[date, Decimal, int]]


def price_index_series(*, first: date, last: date) -> list[IndexSeries]:
    """Each GPU model's daily VWAP over [first, last], for the days it traded: one query."""
    rows = (
        PriceIndex.objects.filter(day__gte=first, day__lte=last)
        .select_related("gpu_model")
        .order_by("gpu_model__name", "gpu_model_id", "day_id")
    )
    series: dict[int, IndexSeries] = {}
    for row in rows:
        entry = series.setdefault(row.gpu_model_id, IndexSeries(gpu_model=row.gpu_model, days=[]))
        entry.days.append(
            (row.day_id, vwap(notional=row.notional, volume_gpu_hours=row.volume_gpu_hours), row.volume_gpu_hours)
        )
    return list(series.values())
