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

A sale may not take the exposure past the lab's credit limit (``Organization.credit_limit``,
no limit when empty). Instant booking checks it inside its one statement (``LAB_EXPOSURE``
is embedded in ``broker.booking.LISTING_BOOK``), the matching engine for every fill it
plans, and a compute request when it is placed, at its most (all its GPU-hours at its
highest price). Every sale bumps the lab's ``exposure_version`` in its own transaction, so
a booking that read the exposure before another sale committed sees the version moved and
reads again: two sales never pass the limit together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection

from billing.models import Invoice
from core.errors import CreditLimitExceeded
from core.money import ZERO
from marketplace.models import BillingMode

# The exposure of the labs in ``exposure_labs(id)``, a relation the embedding query names.
# Its parameters are %(committed)s (the committed billing mode) and %(invoice_issued)s.
LAB_EXPOSURE = """
SELECT o.id AS lab_id, o.credit_limit, o.exposure_version AS version,
       round(COALESCE(c.committed, 0), 2) AS committed, round(COALESCE(c.metered, 0), 2) AS metered,
       round(COALESCE(i.unpaid, 0), 2) AS unpaid
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

_LAB_EXPOSURES = """
WITH exposure_labs AS (SELECT unnest(%(labs)s::bigint[]) AS id)
SELECT lab_id, credit_limit, committed, metered, unpaid, version FROM ({LAB_EXPOSURE}) e
""".replace("{LAB_EXPOSURE}", LAB_EXPOSURE)
_LOCK_LABS = "SELECT id FROM marketplace_organization WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
_BUMP_VERSIONS = "UPDATE marketplace_organization SET exposure_version = exposure_version + 1 WHERE id = ANY(%s)"


@dataclass(frozen=True, slots=True)
class Exposure:
    lab_id: int
    credit_limit: Decimal | None
    committed: Decimal
    metered: Decimal
    unpaid: Decimal
    version: int

    @property
    def total(self) -> Decimal:
        return self.committed + self.metered + self.unpaid  # each in cents

    @property
    def available(self) -> Decimal | None:
        """What the lab may still buy; None without a limit."""
        if self.credit_limit is None:
            return None
        return max(ZERO, self.credit_limit - self.total)

    def allows(self, amount: Decimal) -> bool:
        return self.credit_limit is None or self.total + amount <= self.credit_limit

    def refusal(self, amount: Decimal, *, what: str = "This purchase") -> CreditLimitExceeded:
        return credit_limit_exceeded(limit=self.credit_limit, exposure=self.total, amount=amount, what=what)


def credit_limit_exceeded(
    *, limit: Decimal, exposure: Decimal, amount: Decimal, what: str = "This purchase"
) -> CreditLimitExceeded:
    """The one refusal: 409 ``credit_limit_exceeded`` with limit, exposure and amount in fields."""
    return CreditLimitExceeded(
        f"{what} ({amount}) would take your exposure ({exposure}) past your credit limit ({limit}).",
        fields={"limit": [str(limit)], "exposure": [str(exposure)], "amount": [str(amount)]},
    )


def lab_exposures(lab_ids: Iterable[int], *, lock: bool = False) -> dict[int, Exposure]:
    """The exposure of each lab. ``lock`` (inside a transaction) first locks the labs' rows,
    in id order, against every other sale to them until commit, then reads: the exposure is
    then exact until the caller's sales commit."""
    ids = sorted(set(lab_ids))
    if not ids:
        return {}
    with connection.cursor() as cursor:
        if lock:
            cursor.execute(_LOCK_LABS, [ids])
        cursor.execute(_LAB_EXPOSURES, {"labs": ids, **EXPOSURE_PARAMETERS})
        return {row[0]: Exposure(*row) for row in cursor.fetchall()}


def lab_exposure(lab_id: int, *, lock: bool = False) -> Exposure:
    return lab_exposures([lab_id], lock=lock)[lab_id]


def lab_exposures_changed(lab_ids: Iterable[int]) -> None:
    """Record sales to these labs (the caller holds their rows, see ``lab_exposures``)."""
    ids = sorted(set(lab_ids))
    if ids:
        with connection.cursor() as cursor:
            cursor.execute(_BUMP_VERSIONS, [ids])
