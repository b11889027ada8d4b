"""SLA credits: GPU-hours a contract lost, credited without a claim.

A contract inherits its listing's availability promise, ``sla_availability`` (percent), and
its ``sla_breach_credit_rate`` when it is written. Its **lost hours** are, for each node it
held, the hours of the node's allocation to it that fell inside

- a ``failure`` incident of the node, from the incident's start until its resolution; a
  failed node replaced from the next whole hour is no longer allocated to the contract from
  then on (``broker.incidents``), so its loss ends at the replacement;
- or a late delivery: from the contract's start until its provider reported it delivered
  (or, undelivered, until its end), when that report came ``DELIVERY_GRACE_MINUTES`` or more
  after the start (or never). A delivery within the grace is on time and loses nothing.

Overlaps count once (a node failing while the contract is still undelivered). Lost GPU-hours
``L`` are those hours times the cluster's GPUs per node, counted up to the end of the month
being closed. With ``H`` the contract's GPU-hours (``gpu_count`` x its hours, up to an early
release), ``a`` its promise and ``p`` its price per GPU-hour, the credit owed so far is

    rate = sla_breach_credit_rate  if L > H x (100 - a) / 100    (the promise is broken)
           1                        otherwise
    owed = round(L x p x rate, 2)                  committed contracts
    owed = round(L x p x (rate - 1), 2)            metered contracts

``owed`` never passes what the contract was billed, net of credit notes (so hours a credit
note already gave back, as a cancellation's does, are not credited again).
A metered contract bills only usage its provider reports, and usage on a failed node is
refused (``billing.services.usage_ingest``), so its lost hours are not billed to begin with:
only the breach premium is owed. Each close writes one ``sla_credit`` line per contract for
``owed`` less what earlier credit lines gave back (never negative, so a credit is never taken
back), with the platform's fee reversed in proportion: the invoice, the provider's statement
and the ledger net it out of the sale. Worked example: 2 nodes of 8 GPUs at 2.0000, one node
down 3 h 30 min with no spare: L = 28 GPU-hours, a credit of 56.00 on a committed contract.

``SLA_LINES`` is the one implementation. It is a part of the close's rating statement
(``billing.close_sql.RATE_LINES``), so the close and the invoice preview credit alike.
"""

from datetime import datetime

from django.conf import settings

from billing.fees import FEE_RATE
from billing.models import InvoiceLine
from broker.models import Incident
from core.money import PRICE_PLACES

# The credit lines a close of %(period)s writes, one row per contract owed more than its
# earlier credits gave back, in RATE_LINES' columns. Reads contracts that had a failure on a
# node they held, or were delivered late, before the month's end (or now, for a month not over).
SLA_LINES = """
sla_contracts AS (
    SELECT a.contract_id AS id
    FROM broker_incident i
    JOIN broker_allocation a ON a.node_id = i.node_id
         AND a.starts_at < COALESCE(i.resolved_at, 'infinity') AND a.ends_at > i.started_at
    WHERE i.kind = %(failure)s AND i.started_at < %(end)s
    UNION
    SELECT c.id FROM broker_contract c
    WHERE c.starts_at < %(end)s
      AND (c.delivery_late_at IS NOT NULL OR c.delivered_at >= c.starts_at + %(grace)s * interval '1 minute')
), sla_terms AS (
    SELECT c.id, c.lab_id, c.provider_id, c.billing_mode, c.gpu_count, c.starts_at,
           CASE WHEN c.released_at < c.ends_at THEN c.released_at ELSE c.ends_at END AS service_end,
           c.price_per_gpu_hour AS price, c.sla_availability, c.sla_breach_credit_rate,
           cl.gpus_per_node, gm.name AS gpu_model, {fee_rate} AS fee_rate,
           -- the late stretch: from the start until the delivery, when it came after the grace
           CASE WHEN c.delivered_at IS NULL AND c.delivery_late_at IS NULL THEN NULL
                WHEN c.delivered_at < c.starts_at + %(grace)s * interval '1 minute' THEN NULL
                ELSE tstzrange(c.starts_at, c.delivered_at) END AS late
    FROM broker_contract c
    JOIN marketplace_cluster cl ON cl.id = c.cluster_id
    JOIN marketplace_gpumodel gm ON gm.id = cl.gpu_model_id
    JOIN marketplace_listing l ON l.id = c.listing_id
    JOIN marketplace_organization o ON o.id = c.provider_id
    WHERE c.id IN (SELECT id FROM sla_contracts)
      AND c.sla_availability IS NOT NULL
      AND (%(lab)s::bigint IS NULL OR c.lab_id = %(lab)s)
), sla_lost AS (
    -- per allocation: its hours in the contract's service up to %(sla_until)s, times the union
    -- of its node's failures and the late stretch; GPU-hours per contract
    SELECT a.contract_id,
           SUM(EXTRACT(EPOCH FROM upper(lost.span) - lower(lost.span)) * t.gpus_per_node) / 3600 AS gpu_hours
    FROM sla_terms t
    JOIN broker_allocation a ON a.contract_id = t.id AND a.ends_at > a.starts_at
    CROSS JOIN LATERAL (
        SELECT range_agg(r) AS down
        FROM (
            SELECT tstzrange(i.started_at, i.resolved_at) AS r
            FROM broker_incident i
            WHERE i.node_id = a.node_id AND i.kind = %(failure)s
              AND i.started_at < a.ends_at AND COALESCE(i.resolved_at, 'infinity') > a.starts_at
            UNION ALL
            SELECT t.late WHERE t.late IS NOT NULL
        ) stretches
    ) d
    CROSS JOIN LATERAL unnest(
        d.down * tstzmultirange(tstzrange(
            GREATEST(a.starts_at, t.starts_at), LEAST(a.ends_at, t.service_end, %(sla_until)s)
        ))
    ) AS lost(span)
    WHERE d.down IS NOT NULL AND GREATEST(a.starts_at, t.starts_at) < LEAST(a.ends_at, t.service_end, %(sla_until)s)
    GROUP BY a.contract_id
), sla_credited AS (
    SELECT l.contract_id, SUM(l.quantity) AS quantity, -SUM(l.amount) AS amount
    FROM billing_invoiceline l
    JOIN billing_invoice i ON i.id = l.invoice_id
    WHERE l.kind = %(sla_credit)s AND i.status <> %(draft)s AND l.contract_id IN (SELECT id FROM sla_terms)
    GROUP BY l.contract_id
), sla_billed AS (
    -- What each contract was billed, net: its sales on issued invoices and in this close, less
    -- the credit notes that reversed them. A contract's credits never pass it, so hours that
    -- a credit note already gave back (a cancellation's) are not credited twice.
    SELECT parts.contract_id, SUM(parts.amount) AS amount
    FROM (
        SELECT l.contract_id, l.amount
        FROM billing_invoiceline l JOIN billing_invoice i ON i.id = l.invoice_id
        WHERE l.kind <> %(sla_credit)s AND i.status <> %(draft)s AND l.contract_id IN (SELECT id FROM sla_terms)
        UNION ALL
        SELECT l.contract_id, -c.amount
        FROM billing_creditnoteline c JOIN billing_invoiceline l ON l.id = c.invoice_line_id
        WHERE l.contract_id IN (SELECT id FROM sla_terms)
        UNION ALL
        SELECT p.id, p.amount FROM priced p WHERE p.id IN (SELECT id FROM sla_terms)
    ) parts
    GROUP BY parts.contract_id
), sla_rated AS (
    SELECT t.*, lost.gpu_hours,
           CASE WHEN lost.gpu_hours * 100 > t.gpu_count * EXTRACT(EPOCH FROM t.service_end - t.starts_at) / 3600
                                            * (100 - t.sla_availability)
                THEN t.sla_breach_credit_rate ELSE 1 END
           - CASE WHEN t.billing_mode = %(metered_mode)s THEN 1 ELSE 0 END AS rate,
           COALESCE(cr.quantity, 0) AS credited_hours, COALESCE(cr.amount, 0) AS credited
    FROM sla_terms t
    JOIN sla_lost lost ON lost.contract_id = t.id
    LEFT JOIN sla_credited cr ON cr.contract_id = t.id
), sla_owed AS (
    SELECT r.*, LEAST(round(r.gpu_hours * r.price * r.rate, %(places)s), GREATEST(COALESCE(b.amount, 0), 0)) AS owed
    FROM sla_rated r
    LEFT JOIN sla_billed b ON b.contract_id = r.id
), sla_lines AS (
    SELECT 2 AS part, s.lab_id, s.id AS contract_id, s.provider_id, %(sla_credit)s AS kind,
           %(period)s::date AS service_period,
           'Contract ' || s.id || ': ' || s.gpu_count || ' x ' || s.gpu_model || ', SLA credit for '
               || trim_scale(round(s.gpu_hours, 4)) || ' GPU-hours lost through ' || %(month)s
               || CASE WHEN s.rate + CASE WHEN s.billing_mode = %(metered_mode)s THEN 1 ELSE 0 END > 1
                       THEN ' (below the ' || trim_scale(s.sla_availability) || '%% promised: '
                            || trim_scale(s.sla_breach_credit_rate) || ' x price)'
                       ELSE '' END AS description,
           GREATEST(s.gpu_hours - s.credited_hours, 0) AS quantity,
           round(s.price * s.rate, %(price_places)s) AS unit_price,
           -(s.owed - s.credited) AS amount, s.fee_rate
    FROM sla_owed s
    WHERE s.owed > s.credited
)""".replace("{fee_rate}", FEE_RATE)


def sla_params(*, end: datetime, now: datetime) -> dict:
    """The parameters ``SLA_LINES`` adds to the rating statement's: losses count up to the
    month's end, or up to now for a month not over (a preview)."""
    return {
        "failure": Incident.Kind.FAILURE,
        "grace": settings.DELIVERY_GRACE_MINUTES,
        "sla_until": min(end, now),
        "sla_credit": InvoiceLine.Kind.SLA_CREDIT,
        "price_places": PRICE_PLACES,
    }
