"""The broker's share of a sale: a rate per contract, applied to each of its invoice lines.

A provider's own capacity pays its platform fee rate (the organization's, else
``PLATFORM_FEE_RATE``); a resale's sales (a listing of depth 1 or more, ``broker.resale``) pay
``RESALE_FEE_RATE`` instead, whoever the seller is. ``FEE_RATE`` is that rule as an SQL
expression over a contract's listing ``l`` and seller ``o``, used by the rating statement for
sales and SLA credits alike (``billing.close_sql``, ``billing.sla``), with ``fee_params``.
"""

from django.conf import settings

FEE_RATE = (
    "CASE WHEN l.depth > 0 THEN %(resale_fee_rate)s::numeric "
    "ELSE COALESCE(o.platform_fee_rate, %(default_fee_rate)s::numeric) END"
)


def fee_params() -> dict:
    """The parameters ``FEE_RATE`` reads."""
    return {"default_fee_rate": settings.PLATFORM_FEE_RATE, "resale_fee_rate": settings.RESALE_FEE_RATE}
