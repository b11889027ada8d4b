"""Double-entry postings. Positive amounts are debits, negative credits; legs sum to zero."""

from collections.abc import Iterable
from decimal import Decimal

from django.db.models import Q, Sum

from billing.models import Account, LedgerEntry, LedgerTransaction
from core.db import bulk_insert
from core.money import ZERO

Leg = tuple[str, int | None]  # (account kind, organization id or None for platform accounts)
Posting = tuple[str, str, str, dict[Leg, Decimal]]  # (kind, source key, memo, legs)


class UnbalancedPosting(ValueError):
    pass


def _accounts(legs: Iterable[Leg]) -> dict[Leg, int]:
    wanted = set(legs)
    organizations = {organization_id for _, organization_id in wanted if organization_id is not None}
    rows = Account.objects.filter(
        Q(organization_id__in=organizations) | Q(organization__isnull=True),
        kind__in={kind for kind, _ in wanted},
    ).values_list("pk", "kind", "organization_id")
    accounts: dict[Leg, int] = {(kind, org): pk for pk, kind, org in rows if (kind, org) in wanted}
    missing = wanted - accounts.keys()
    if missing:
        Account.objects.bulk_create(
            [Account(kind=kind, organization_id=org) for kind, org in missing], ignore_conflicts=True
        )
        return _accounts(wanted)
    return accounts


def ledger_post(postings: list[Posting]) -> list[LedgerTransaction]:
    """Write balanced transactions, one per posting; zero legs are dropped."""
    cleaned = []
    for kind, source_key, memo, legs in postings:
        legs = {leg: amount for leg, amount in legs.items() if amount != 0}
        if sum(legs.values(), ZERO) != 0:
            raise UnbalancedPosting(f"{source_key}: legs sum to {sum(legs.values(), ZERO)}")
        if legs:
            cleaned.append((kind, source_key, memo, legs))
    if not cleaned:
        return []
    accounts = _accounts(leg for *_, legs in cleaned for leg in legs)
    transactions = LedgerTransaction.objects.bulk_create(
        LedgerTransaction(kind=kind, source_key=source_key, memo=memo) for kind, source_key, memo, _ in cleaned
    )
    bulk_insert(
        LedgerEntry,
        ("transaction_id", "account_id", "amount"),
        (
            (txn.pk, accounts[leg], amount)
            for txn, (*_, legs) in zip(transactions, cleaned, strict=True)
            for leg, amount in legs.items()
        ),
    )
    return transactions


def account_balance(*, kind: str, organization_id: int | None = None) -> Decimal:
    """A balance is the sum of its entries (debit-positive), never a stored counter."""
    entries = LedgerEntry.objects.filter(account__kind=kind, account__organization_id=organization_id)
    return entries.aggregate(total=Sum("amount"))["total"] or ZERO
