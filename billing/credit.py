"""Credit limits: how much a lab may owe and have committed, and what it has now.

A lab's **exposure** is what it will owe for what it already has:

- **committed**: its committed contracts, for the hours not yet invoiced (those after the
  last closed month, up to an early release), at their price;
- **metered**: its metered contracts at their ceiling, every GPU of every hour not yet
  invoiced: a metered contract bills at most that, and nothing bounds it lower before the
  usage is in (the estimate is the most the lab can run up, not a guess at its habits);
- **unpaid**: its issued invoices, less what was paid and credited on them.

Usage reported late for a closed month is billed by the next close and is not counted: a
contract's hours before the last closed month count as invoiced.

``LAB_EXPOSURE`` is the definition. A sale must not read it, since its cost grows with the
lab's contracts: the lab's row keeps the three figures (``exposure_committed``,
``exposure_metered``, ``exposure_unpaid``). A sale adds what it sells, in the statement or
transaction that writes the contracts, while holding the lab's row: instant booking in its
one statement (``broker.booking.LISTING_BOOK``: an ``UPDATE`` of the lab's row whose
condition PostgreSQL checks again on the row's latest version, so two bookings never pass
the limit together), the matching engine after locking the chunk's labs. Whatever else
changes the exposure (a release, a month's close, a payment, a credit note) sets the
figures again from the definition (``lab_exposures_refresh``), holding the rows. A test
checks, after every kind of change, that the figures equal the definition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection

from billing.models import Invoice
from core.errors import CreditLimitExceeded
from core.money import ZERO, round_money
from marketplace.models import BillingMode

# The exposure of the labs in ``exposure_labs(id)``, a relation the embedding query names.
# Its parameters are %(committed)s (the committed billing mode) and %(invoice_issued)s.
LAB_EXPOSURE = """
SELECT o.id AS lab_id, COALESCE(c.committed, 0) AS committed, COALESCE(c.metered, 0) AS metered,
       COALESCE(i.unpaid, 0) AS unpaid
FROM marketplace_organization o
CROSS JOIN (
    -- invoiced through the end of the last closed month; months close in order
    SELECT COALESCE(MAX(period) + interval '1 month', '-infinity'::timestamp) AT TIME ZONE 'UTC' AS moment
    FROM billing_billingperiod
) open_from
LEFT JOIN LATERAL (
    SELECT SUM(value) FILTER (WHERE billing_mode = %(committed)s) AS committed,
           SUM(value) FILTER (WHERE billing_mode <> %(committed)s) AS metered
    FROM (
        SELECT c.billing_mode, c.gpu_count * c.price_per_gpu_hour * GREATEST(0, floor(EXTRACT(EPOCH FROM (
                   LEAST(c.ends_at, COALESCE(c.released_at, c.ends_at)) - GREATEST(c.starts_at, open_from.moment)
               )) / 3600)) AS value
        FROM broker_contract c
        WHERE c.lab_id = o.id AND c.ends_at > open_from.moment
          AND (c.released_at IS NULL OR c.released_at > open_from.moment)
    ) contract_values
) c ON true
LEFT JOIN LATERAL (
    SELECT SUM(i.total
               - COALESCE((SELECT SUM(p.amount) FROM billing_payment p WHERE p.invoice_id = i.id), 0)
               - COALESCE((SELECT SUM(n.amount) FROM billing_creditnote n WHERE n.invoice_id = i.id), 0)) AS unpaid
    FROM billing_invoice i
    WHERE i.lab_id = o.id AND i.status = %(invoice_issued)s
) i ON true
WHERE o.id IN (SELECT id FROM exposure_labs)
"""
EXPOSURE_PARAMETERS = {"committed": BillingMode.COMMITTED.value, "invoice_issued": Invoice.Status.ISSUED.value}

_RECOMPUTED = """
WITH exposure_labs AS (SELECT unnest(%(labs)s::bigint[]) AS id)
SELECT lab_id, committed, metered, unpaid FROM ({LAB_EXPOSURE}) e
""".replace("{LAB_EXPOSURE}", LAB_EXPOSURE)
_REFRESH = """
WITH exposure_labs AS (SELECT unnest(%(labs)s::bigint[]) AS id)
UPDATE marketplace_organization o
SET exposure_committed = e.committed, exposure_metered = e.metered, exposure_unpaid = e.unpaid
FROM ({LAB_EXPOSURE}) e
WHERE o.id = e.lab_id
""".replace("{LAB_EXPOSURE}", LAB_EXPOSURE)
_READ = (
    "SELECT id, credit_limit, exposure_committed, exposure_metered, exposure_unpaid FROM marketplace_organization "
    "WHERE id = ANY(%s) ORDER BY id"
)
_ADD = """
UPDATE marketplace_organization o
SET exposure_committed = o.exposure_committed + a.committed, exposure_metered = o.exposure_metered + a.metered
FROM unnest(%s::bigint[], %s::numeric[], %s::numeric[]) AS a (lab_id, committed, metered)
WHERE o.id = a.lab_id
"""
_ALL_LABS = "SELECT array_agg(id ORDER BY id) FROM marketplace_organization WHERE is_lab"


@dataclass(frozen=True, slots=True)
class Exposure:
    lab_id: int
    credit_limit: Decimal | None
    committed: Decimal
    metered: Decimal
    unpaid: Decimal

    @property
    def total(self) -> Decimal:
        return round_money(self.committed + self.metered + self.unpaid)

    @property
    def available(self) -> Decimal | None:
        """What the lab may still buy; None without a limit."""
        if self.credit_limit is None:
            return None
        return max(ZERO, self.credit_limit - self.total)

    def figures(self) -> dict[str, Decimal | None]:
        """What the lab and the operators are shown, in cents."""
        return {
            "committed": round_money(self.committed),
            "metered": round_money(self.metered),
            "unpaid": round_money(self.unpaid),
            "total": self.total,
            "available": self.available,
        }

    def allows(self, amount: Decimal) -> bool:
        return self.credit_limit is None or self.committed + self.metered + self.unpaid + amount <= self.credit_limit

    def refusal(self, amount: Decimal, *, what: str = "This purchase") -> CreditLimitExceeded:
        return credit_limit_exceeded(limit=self.credit_limit, exposure=self.total, amount=amount, what=what)


def credit_limit_exceeded(
    *, limit: Decimal, exposure: Decimal, amount: Decimal, what: str = "This purchase"
) -> CreditLimitExceeded:
    """The one refusal: 409 ``credit_limit_exceeded`` with limit, exposure and amount in fields."""
    amount = round_money(amount)
    return CreditLimitExceeded(
        f"{what} ({amount}) would take your exposure ({exposure}) past your credit limit ({limit}).",
        fields={"limit": [str(limit)], "exposure": [str(exposure)], "amount": [str(amount)]},
    )


def lab_exposures(lab_ids: Iterable[int], *, lock: bool = False) -> dict[int, Exposure]:
    """Each lab's exposure as its row keeps it. ``lock`` (inside a transaction) locks the rows,
    in id order, until commit, against every other sale to these labs: the figures then stay
    exact while the caller sells, and the caller adds what it sold (``lab_exposures_add``)."""
    ids = sorted(set(lab_ids))
    if not ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_READ + (" FOR NO KEY UPDATE" if lock else ""), [ids])
        return {row[0]: Exposure(*row) for row in cursor.fetchall()}


def exposure_as_read(organization) -> Exposure:
    """The lab's exposure as its row was read with the organization (the columns _READ reads),
    as a request's API key lookup reads it: no second read of the same row."""
    return Exposure(
        organization.pk,
        organization.credit_limit,
        organization.exposure_committed,
        organization.exposure_metered,
        organization.exposure_unpaid,
    )


def lab_exposure(lab_id: int, *, lock: bool = False) -> Exposure:
    return lab_exposures([lab_id], lock=lock)[lab_id]


def lab_exposures_add(sold: dict[int, tuple[Decimal, Decimal]]) -> None:
    """Add what was sold to each lab: (committed, metered) values. The caller holds the rows."""
    if sold:
        labs = sorted(sold)
        with connection.cursor() as cursor:
            cursor.execute(_ADD, [labs, [sold[lab][0] for lab in labs], [sold[lab][1] for lab in labs]])


def lab_exposures_recomputed(lab_ids: Iterable[int]) -> dict[int, tuple[Decimal, Decimal, Decimal]]:
    """(committed, metered, unpaid) of each lab by the definition, ``LAB_EXPOSURE``."""
    with connection.cursor() as cursor:
        cursor.execute(_RECOMPUTED, {"labs": sorted(set(lab_ids)), **EXPOSURE_PARAMETERS})
        return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}


def lab_exposures_refresh(lab_ids: Iterable[int] | None = None) -> None:
    """Set the labs' figures (every lab's with None) from the definition, inside a transaction:
    the rows are locked first, in id order, so no sale commits between the reading and the
    writing (each statement reads what committed before it began)."""
    with connection.cursor() as cursor:
        if lab_ids is None:
            cursor.execute(_ALL_LABS)
            ids = cursor.fetchone()[0] or []
        else:
            ids = sorted(set(lab_ids))
        if not ids:
            return
        cursor.execute(_READ + " FOR NO KEY UPDATE", [ids])
        cursor.execute(_REFRESH, {"labs": ids, **EXPOSURE_PARAMETERS})
