"""A month's close, set-based: rating, invoices, lines, ledger and statements.

Rating turns contracts and usage into invoice lines for a calendar month:

- A committed contract bills the GPU-hours of its window (up to an early release) that
  fall in the month, times its price, whatever was used.
- A metered contract bills the GPU-seconds reported for the month / 3,600, times its price,
  never more than the contract could deliver in that month.
- Usage that arrives after its month was closed is billed as an adjustment line by the
  next close. Which close bills a usage record is kept with the usage totals as records
  arrive (``UsageTotal.billed_in``: the record's month while it is open, else the first
  month not closed yet).
- Lines already on issued invoices are subtracted, so rating twice never bills twice. Each
  line's amount, and its platform-fee share, is rounded half-up to cents once.

``RATE_LINES`` is the one implementation of these rules: a close materialises it into a
temporary table, a preview reads it (``rate_lines``). The rest of the close is a handful of
statements over whole sets, so a close of 10,000 contracts moves no row through Python:
accounts and document numbers are reserved, then invoices, lines, ledger transactions and
their legs (one statement, so the ledger's balance check sees them together), and the
providers' statements with the credit lines they deduct.

``tests/billing`` checks, on random markets, that every close bills exactly the lines a
Python oracle of these rules computes from the usage records themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from billing.fees import FEE_RATE, fee_params
from billing.models import Account, Invoice, InvoiceLine, LedgerTransaction, PayoutStatement
from billing.sla import SLA_LINES, sla_params
from core.money import AMOUNT_PLACES
from core.timeutils import period_bounds
from marketplace.models import BillingMode

# Documents are numbered from gapless sequences, per month: INV-202611-000001, PAY-202611-000001.
INVOICE_SEQUENCE, INVOICE_PREFIX = "invoice", "INV"
PAYOUT_SEQUENCE, PAYOUT_PREFIX = "payout", "PAY"
# An issued invoice's ledger transaction: "invoice:<id>", posted once (a unique key).
INVOICE_SOURCE_PREFIX, INVOICE_MEMO_PREFIX = "invoice:", "Invoice "


@dataclass(frozen=True, slots=True)
class RatedLine:
    """An invoice line, rated (by a preview) or issued."""

    lab_id: int
    contract_id: int
    provider_id: int
    kind: str
    service_period: date
    description: str
    quantity: Decimal  # GPU-hours, exact
    unit_price: Decimal
    amount: Decimal
    fee_rate: Decimal
    fee_amount: Decimal


# The lines a close of %(period)s bills, for every lab or only %(lab)s: the sales, then the
# SLA credits (billing.sla). ``part`` orders them as an invoice lists them: committed blocks
# by contract, then usage by (month, contract), then credits.
# ``numerator`` / ``denominator`` is the exact quantity, so the amount is rounded from the
# exact value, not from a rounded quantity.
_RATE_SALES = """
WITH usage_sums AS (
    -- The usage this close bills, per (contract, month): kept by a trigger as usage arrives
    -- (see UsageTotal), so this reads one row per contract-month, not every record.
    SELECT contract_id, period, gpu_seconds AS seconds FROM billing_usagetotal WHERE billed_in = %(period)s
), terms AS (
    SELECT c.id, c.lab_id, c.provider_id, c.billing_mode, c.gpu_count, c.starts_at,
           CASE WHEN c.released_at < c.ends_at THEN c.released_at ELSE c.ends_at END AS service_end,
           c.price_per_gpu_hour AS price, gm.name AS gpu_model, {fee_rate} AS fee_rate
    FROM broker_contract c
    JOIN marketplace_cluster cl ON cl.id = c.cluster_id
    JOIN marketplace_gpumodel gm ON gm.id = cl.gpu_model_id
    JOIN marketplace_listing l ON l.id = c.listing_id
    JOIN marketplace_organization o ON o.id = c.provider_id
    WHERE ((c.starts_at < %(end)s AND c.ends_at > %(start)s AND (c.released_at IS NULL OR c.released_at > %(start)s))
           OR c.id IN (SELECT contract_id FROM usage_sums))
      AND (%(lab)s::bigint IS NULL OR c.lab_id = %(lab)s)
), billed AS (
    SELECT l.contract_id, l.service_period, SUM(l.quantity) AS quantity
    FROM billing_invoiceline l
    JOIN billing_invoice i ON i.id = l.invoice_id
    WHERE i.status <> %(draft)s AND l.contract_id IN (SELECT id FROM terms) AND l.kind <> %(sla_credit)s
    GROUP BY l.contract_id, l.service_period
), wanted AS (
    SELECT t.*, %(committed)s AS kind, %(period)s::date AS service_period, NULL::numeric AS seconds, 0 AS part
    FROM terms t
    WHERE t.billing_mode = %(committed_mode)s
    UNION ALL
    SELECT t.*, CASE WHEN u.period = %(period)s THEN %(metered)s ELSE %(adjustment)s END, u.period, u.seconds, 1
    FROM usage_sums u
    JOIN terms t ON t.id = u.contract_id
    WHERE t.billing_mode = %(metered_mode)s
), remaining AS (
    SELECT w.*,
           w.gpu_count * GREATEST(0, floor(EXTRACT(EPOCH FROM (
               LEAST(w.service_end, ((w.service_period + interval '1 month')::timestamp AT TIME ZONE 'UTC'))
               - GREATEST(w.starts_at, (w.service_period::timestamp AT TIME ZONE 'UTC'))
           )) / 3600)) - COALESCE(b.quantity, 0) AS hours_left
    FROM wanted w
    LEFT JOIN billed b ON b.contract_id = w.id AND b.service_period = w.service_period
), exact AS (
    -- committed: what is left of the month's hours; metered: the usage, capped by what is left
    SELECT r.*,
           CASE WHEN r.seconds IS NULL OR r.seconds > GREATEST(r.hours_left, 0) * 3600
                THEN GREATEST(r.hours_left, 0) ELSE r.seconds END AS numerator,
           CASE WHEN r.seconds IS NULL OR r.seconds > GREATEST(r.hours_left, 0) * 3600
                THEN 1 ELSE 3600 END AS denominator
    FROM remaining r
), priced AS (
    SELECT e.*, round(e.numerator * e.price / e.denominator, %(places)s) AS amount
    FROM exact e
    WHERE e.numerator > 0
), """.replace("{fee_rate}", FEE_RATE)
_RATE_SELECT = """
SELECT part, lab_id, id AS contract_id, provider_id, kind, service_period,
       'Contract ' || id || ': ' || gpu_count || ' x ' || gpu_model || ', '
           || CASE kind WHEN %(committed)s THEN 'committed ' || %(month)s
                        WHEN %(metered)s THEN 'metered usage ' || %(month)s
                        ELSE 'late usage for ' || to_char(service_period, 'YYYY-MM') END AS description,
       numerator / denominator AS quantity, price AS unit_price, amount, fee_rate,
       round(amount * fee_rate, %(places)s) AS fee_amount
FROM priced
UNION ALL
SELECT part, lab_id, contract_id, provider_id, kind, service_period, description, quantity, unit_price, amount,
       fee_rate, round(amount * fee_rate, %(places)s)
FROM sla_lines
"""
RATE_LINES = "".join((_RATE_SALES, SLA_LINES, _RATE_SELECT))

_MATERIALISE_LINES = "CREATE TEMPORARY TABLE billing_close_line ON COMMIT DROP AS " + RATE_LINES

_ENSURE_ACCOUNTS = """
INSERT INTO billing_account (kind, organization_id)
SELECT DISTINCT kind, organization_id FROM (
    SELECT %(receivable)s AS kind, lab_id AS organization_id FROM billing_close_line WHERE amount <> 0
    UNION ALL
    SELECT %(payable)s, provider_id FROM billing_close_line WHERE amount <> fee_amount
    UNION ALL
    SELECT %(revenue)s, NULL FROM billing_close_line WHERE fee_amount <> 0
) legs
ON CONFLICT DO NOTHING
"""

_ISSUE = """
WITH seq AS (
    UPDATE billing_documentsequence
    SET last_value = last_value + (SELECT COUNT(DISTINCT lab_id) FROM billing_close_line)
    WHERE name = %(sequence)s
    RETURNING last_value - (SELECT COUNT(DISTINCT lab_id) FROM billing_close_line) AS base
), totals AS (
    SELECT lab_id, SUM(amount) AS total, row_number() OVER (ORDER BY lab_id) AS n
    FROM billing_close_line GROUP BY lab_id
), issued AS (
    INSERT INTO billing_invoice (lab_id, period, number, status, total, created_at, issued_at, paid_at)
    SELECT t.lab_id, %(period)s, %(number_prefix)s || lpad((seq.base + t.n)::text, 6, '0'),
           CASE WHEN t.total > 0 THEN %(issued)s ELSE %(paid)s END, t.total, %(now)s, %(now)s,
           CASE WHEN t.total > 0 THEN NULL ELSE %(now)s::timestamptz END
    FROM totals t CROSS JOIN seq
    ORDER BY t.lab_id
    RETURNING id, lab_id, number, total
)
INSERT INTO billing_close_invoice SELECT id, lab_id, number, total FROM issued
"""

_LINES = """
INSERT INTO billing_invoiceline (invoice_id, contract_id, provider_id, kind, service_period, description,
                                 quantity, unit_price, amount, fee_rate, fee_amount)
SELECT i.id, l.contract_id, l.provider_id, l.kind, l.service_period, l.description,
       l.quantity, l.unit_price, l.amount, l.fee_rate, l.fee_amount
FROM billing_close_line l
JOIN billing_close_invoice i ON i.lab_id = l.lab_id
ORDER BY l.part, l.service_period, l.contract_id
"""

# Each issued invoice posts: the lab owes the total; each provider is owed its lines' net;
# the platform earns the fees (credit lines take their share back). Zero legs are left out;
# an invoice none of whose legs is non-zero (its lines all 0.00, or netting out) posts nothing.
_POST = """
WITH invoices AS (
    SELECT id, lab_id, number, total, %(source_prefix)s || id AS source_key
    FROM billing_close_invoice i
    WHERE i.total <> 0
       OR EXISTS (SELECT 1 FROM billing_close_line l WHERE l.lab_id = i.lab_id
                  GROUP BY l.provider_id HAVING SUM(l.amount - l.fee_amount) <> 0)
       OR (SELECT SUM(l.fee_amount) FROM billing_close_line l WHERE l.lab_id = i.lab_id) <> 0
), txns AS (
    INSERT INTO billing_ledgertransaction (kind, source_key, memo, created_at)
    SELECT %(kind)s, source_key, %(memo_prefix)s || number, %(now)s FROM invoices ORDER BY id
    RETURNING id, source_key
), legs AS (
    SELECT i.id AS invoice_id, %(receivable)s AS kind, i.lab_id AS organization_id, i.total AS amount
    FROM invoices i
    UNION ALL
    SELECT i.id, %(payable)s, l.provider_id, -SUM(l.amount - l.fee_amount)
    FROM billing_close_line l JOIN invoices i ON i.lab_id = l.lab_id
    GROUP BY i.id, l.provider_id
    UNION ALL
    SELECT i.id, %(revenue)s, NULL, -SUM(l.fee_amount)
    FROM billing_close_line l JOIN invoices i ON i.lab_id = l.lab_id
    GROUP BY i.id
)
INSERT INTO billing_ledgerentry (transaction_id, account_id, amount)
SELECT t.id, a.id, legs.amount
FROM legs
JOIN invoices i ON i.id = legs.invoice_id
JOIN txns t ON t.source_key = i.source_key
JOIN billing_account a ON a.kind = legs.kind AND COALESCE(a.organization_id, 0) = COALESCE(legs.organization_id, 0)
WHERE legs.amount <> 0
ORDER BY t.id, legs.kind, legs.organization_id
"""

# Each provider's gross, fee and net: this close's lines less the credit lines written
# since the previous close, which the statement then records as deducted, plus the negative
# nets of earlier statements, which it carries in.
_STATEMENTS = """
WITH credits AS (
    SELECT c.id, il.provider_id, c.amount, c.fee_amount
    FROM billing_creditnoteline c
    JOIN billing_invoiceline il ON il.id = c.invoice_line_id
    WHERE c.statement_id IS NULL
), owed AS (
    SELECT id, provider_id, net FROM billing_payoutstatement
    WHERE status = %(issued)s AND net < 0
    FOR UPDATE
), totals AS (
    SELECT provider_id, SUM(amount) AS gross, SUM(fee_amount) AS fee, SUM(carried) AS carried_in,
           SUM(sla) AS sla_credits, row_number() OVER (ORDER BY provider_id) AS n
    FROM (
        SELECT provider_id, amount, fee_amount, 0 AS carried,
               CASE WHEN kind = %(sla_credit)s THEN amount ELSE 0 END AS sla
        FROM billing_close_line
        UNION ALL
        SELECT provider_id, -amount, -fee_amount, 0, 0 FROM credits
        UNION ALL
        SELECT provider_id, 0, 0, net, 0 FROM owed
    ) parts
    GROUP BY provider_id
), seq AS (
    UPDATE billing_documentsequence SET last_value = last_value + (SELECT COUNT(*) FROM totals)
    WHERE name = %(sequence)s
    RETURNING last_value - (SELECT COUNT(*) FROM totals) AS base
), statements AS (
    INSERT INTO billing_payoutstatement
        (provider_id, period, number, gross, fee, carried_in, sla_credits, net, status, created_at)
    SELECT t.provider_id, %(period)s, %(number_prefix)s || lpad((seq.base + t.n)::text, 6, '0'),
           t.gross, t.fee, t.carried_in, t.sla_credits, t.gross - t.fee + t.carried_in, %(issued)s, %(now)s
    FROM totals t CROSS JOIN seq
    ORDER BY t.provider_id
    RETURNING id, provider_id
), deducted AS (
    UPDATE billing_creditnoteline c SET statement_id = s.id
    FROM credits cr JOIN statements s ON s.provider_id = cr.provider_id
    WHERE c.id = cr.id
), carried AS (
    UPDATE billing_payoutstatement p SET status = %(carried)s, carried_into_id = s.id
    FROM owed o JOIN statements s ON s.provider_id = o.provider_id
    WHERE p.id = o.id
)
SELECT COUNT(*) FROM statements
"""


def rate_lines_params(*, period: date, lab_id: int | None = None, now: datetime | None = None) -> dict:
    """The parameters of ``RATE_LINES``: the month, the lab (None: every lab), statuses and rates."""
    start, end = period_bounds(period)
    return {
        **sla_params(end=end, now=now or timezone.now()),
        "start": start,
        "end": end,
        "period": period,
        "lab": lab_id,
        "draft": Invoice.Status.DRAFT,
        "committed": InvoiceLine.Kind.COMMITTED,
        "metered": InvoiceLine.Kind.METERED,
        "adjustment": InvoiceLine.Kind.ADJUSTMENT,
        "committed_mode": BillingMode.COMMITTED,
        "metered_mode": BillingMode.METERED,
        **fee_params(),
        "places": AMOUNT_PLACES,
        "month": f"{period:%Y-%m}",
    }


def rate_lines(*, period: date, lab_id: int | None = None) -> list[RatedLine]:
    """The lines a close of ``period`` would bill from the current data, in invoice order.

    Reads only: the statement the close materialises, run as a query.
    """
    with connection.cursor() as cursor:
        cursor.execute(RATE_LINES, rate_lines_params(period=period, lab_id=lab_id))
        rows = cursor.fetchall()
    rows.sort(key=lambda row: (row[0], row[5], row[2]))  # part, service period, contract
    return [RatedLine(*row[1:]) for row in rows]


def close_in_sql(*, period: date, now: datetime) -> tuple[int, int]:
    """Rate and issue ``period`` in the current transaction; (invoices, statements) written.

    The caller holds the usage lock alone, so every committed usage batch is in the totals
    and none is half-written.
    """
    with connection.cursor() as cursor:
        cursor.execute(_MATERIALISE_LINES, rate_lines_params(period=period, now=now))
        legs = {
            "receivable": Account.Kind.LAB_RECEIVABLE,
            "payable": Account.Kind.PROVIDER_PAYABLE,
            "revenue": Account.Kind.PLATFORM_REVENUE,
        }
        # A temporary table has no statistics until analyzed; sizes and a few common values
        # are all the later joins need, so a small sample does.
        cursor.execute("SET LOCAL default_statistics_target = 10")
        cursor.execute("ANALYZE billing_close_line")
        cursor.execute(_ENSURE_ACCOUNTS, legs)
        for name in (INVOICE_SEQUENCE, PAYOUT_SEQUENCE):
            cursor.execute(
                "INSERT INTO billing_documentsequence (name, last_value) VALUES (%s, 0) ON CONFLICT (name) DO NOTHING",
                [name],
            )
        cursor.execute(
            "CREATE TEMPORARY TABLE billing_close_invoice (id bigint, lab_id bigint, number text, total numeric)"
            " ON COMMIT DROP"
        )
        cursor.execute(
            _ISSUE,
            {
                "period": period,
                "sequence": INVOICE_SEQUENCE,
                "number_prefix": f"{INVOICE_PREFIX}-{period:%Y%m}-",
                "now": now,
                "issued": Invoice.Status.ISSUED,
                "paid": Invoice.Status.PAID,
            },
        )
        invoices = cursor.rowcount
        cursor.execute("ANALYZE billing_close_invoice")
        cursor.execute("RESET default_statistics_target")
        cursor.execute(_LINES)
        cursor.execute(
            _POST,
            {
                "kind": LedgerTransaction.Kind.INVOICE,
                "source_prefix": INVOICE_SOURCE_PREFIX,
                "memo_prefix": INVOICE_MEMO_PREFIX,
                "now": now,
                **legs,
            },
        )
        cursor.execute(
            _STATEMENTS,
            {
                "period": period,
                "sequence": PAYOUT_SEQUENCE,
                "number_prefix": f"{PAYOUT_PREFIX}-{period:%Y%m}-",
                "now": now,
                "issued": PayoutStatement.Status.ISSUED,
                "carried": PayoutStatement.Status.CARRIED,
                "sla_credit": InvoiceLine.Kind.SLA_CREDIT,
            },
        )
        statements = cursor.fetchone()[0]
        cursor.execute("DROP TABLE billing_close_line, billing_close_invoice")
    return invoices, statements
