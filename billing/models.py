from datetime import timedelta

from django.db import models
from django.db.models import DurationField, ExpressionWrapper, F, Q
from django.db.models.lookups import GreaterThan

from broker.models import Contract
from core.money import AmountField, PriceField, QuantityField, RateField
from marketplace.models import Node, Organization

# Usage records are mostly an hour or so; the few longer than this have an index of their own
# (see UsageRecord's indexes), so a search by time stays within about this much of its stretch.
LONG_USAGE = timedelta(days=1)


class UsageRecord(models.Model):
    """GPU-seconds a provider reports for a contract over [started_at, ended_at).

    ``event_id`` is the provider's own id: a record sent twice is stored once. Records are
    immutable; which close bills one is kept with the usage totals as it arrives (see
    UsageTotal).

    One composite foreign key (contract, provider) -> contract (id, provider) holds both
    that the contract exists and that it is this provider's (migration 0005): one check per
    row instead of two.
    """

    # (provider, event_id) is unique and (contract, period) indexed: no single-column indexes.
    provider = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="usage_records", db_index=False, db_constraint=False
    )
    event_id = models.CharField(max_length=128)
    contract = models.ForeignKey(
        Contract, on_delete=models.PROTECT, related_name="usage_records", db_index=False, db_constraint=False
    )
    # Nothing reads usage by node, and nodes are never deleted: the key is checked, not indexed.
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    gpu_seconds = models.DecimalField(max_digits=18, decimal_places=3)
    period = models.DateField(help_text="First day of the UTC month the usage falls in.")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="usage_event_unique_per_provider"),
            models.CheckConstraint(condition=Q(ended_at__gt=F("started_at")), name="usage_interval_positive"),
            models.CheckConstraint(condition=Q(gpu_seconds__gte=0), name="usage_gpu_seconds_non_negative"),
        ]
        indexes = [
            models.Index(fields=["period", "contract"]),
            models.Index(fields=["contract", "period"]),
            # The capacity check reads a contract's records that overlap a stretch of time:
            # those of up to LONG_USAGE end at most that long after it (a range of this
            # index), and the few longer ones are all in the next.
            models.Index(fields=["contract", "ended_at"], name="usage_contract_ended"),
            models.Index(
                fields=["contract", "ended_at"],
                condition=Q(
                    GreaterThan(ExpressionWrapper(F("ended_at") - F("started_at"), DurationField()), LONG_USAGE)
                ),
                name="usage_contract_long",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id}: {self.gpu_seconds} GPU-s on contract {self.contract_id}"


class UsageTotal(models.Model):
    """Usage summed per contract, usage month and the month whose close bills it.

    Kept by the database (migration 0006): a trigger adds each INSERT's new usage records
    (COPY included) to their rows, so a close reads one row per contract-month instead of
    every record. ``billed_in`` is the usage month while that month is open, else the first
    month not closed yet (late usage, billed as an adjustment). The trigger takes the usage
    lock shared, as ingestion does, so a close never sees half a batch. Usage records are
    append-only, so the totals cannot drift from them.
    """

    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="+", db_index=False)
    period = models.DateField(help_text="First day of the UTC month the usage falls in.")
    billed_in = models.DateField(help_text="First day of the month whose close bills it.")
    gpu_seconds = models.DecimalField(max_digits=24, decimal_places=3)
    records = models.PositiveBigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["contract", "period", "billed_in"], name="usage_total_unique"),
        ]
        indexes = [models.Index(fields=["billed_in"], name="usage_total_billed_in")]

    def __str__(self) -> str:
        return f"{self.gpu_seconds} GPU-s on contract {self.contract_id} for {self.period:%Y-%m}"


class BillingPeriod(models.Model):
    """A closed calendar month. Closing is done once; its watermark splits late usage off."""

    period = models.DateField(unique=True, help_text="First day of the UTC month.")
    usage_watermark = models.BigIntegerField(help_text="Highest usage record id billed by this close.")
    closed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-period"]

    def __str__(self) -> str:
        return f"{self.period:%Y-%m}"


class DocumentSequence(models.Model):
    """Gapless numbering for invoices, credit notes and statements (row-locked counter)."""

    name = models.CharField(max_length=32, unique=True)
    last_value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: {self.last_value}"


class InvoiceQuerySet(models.QuerySet):
    def non_draft(self) -> "InvoiceQuerySet":
        """Invoices that were issued (numbered and posted), whatever happened to them since."""
        return self.exclude(status=Invoice.Status.DRAFT)


class Invoice(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"  # being assembled; no number, no ledger posting
        ISSUED = "issued", "Issued"  # numbered, posted, immutable; awaiting payment
        PAID = "paid", "Paid"  # payments cover it
        VOID = "void", "Void"  # fully reversed by a credit note

    lab = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="invoices")
    period = models.DateField(help_text="First day of the billed UTC month.")
    number = models.CharField(max_length=32, unique=True, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    total = AmountField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    issued_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    objects = InvoiceQuerySet.as_manager()

    class Meta:
        ordering = ["-period", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["lab", "period"], name="invoice_one_per_lab_period"),
            models.CheckConstraint(
                condition=Q(status="draft") | Q(number__isnull=False), name="invoice_issued_has_number"
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"Draft invoice {self.pk}"


class InvoiceLineQuerySet(models.QuerySet):
    def non_draft(self) -> "InvoiceLineQuerySet":
        """Lines of invoices that were issued: what has been billed."""
        return self.filter(invoice__in=Invoice.objects.non_draft())


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        COMMITTED = "committed", "Committed block"  # GPU-hours of the window in the period
        METERED = "metered", "Metered usage"  # reported GPU-seconds in the period
        ADJUSTMENT = "adjustment", "Late usage adjustment"  # usage of a closed period
        # GPU-hours lost to failures and late delivery, credited without a claim (billing.sla):
        # a negative amount and fee, so the invoice, the provider's statement and the ledger
        # all net it out of the sale.
        SLA_CREDIT = "sla_credit", "SLA credit"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    # One composite key (contract, provider) -> contract (id, provider) checks both, and
    # that the line's provider is the contract's (migration 0006); (contract,
    # service_period) is indexed below.
    contract = models.ForeignKey(
        Contract, on_delete=models.PROTECT, related_name="invoice_lines", db_index=False, db_constraint=False
    )
    # Checked with the contract (above); nothing reads lines by provider, so not indexed.
    provider = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    service_period = models.DateField(help_text="The month whose service this line bills.")
    description = models.CharField(max_length=255)
    quantity = QuantityField(help_text="GPU-hours.")
    unit_price = PriceField()
    amount = AmountField()
    fee_rate = RateField()
    fee_amount = AmountField()

    objects = InvoiceLineQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gte=0), name="invoice_line_quantity_non_negative"),
            # A sale bills a positive amount (or nothing); a credit line gives back a negative one.
            models.CheckConstraint(
                condition=(~Q(kind="sla_credit") & Q(amount__gte=0)) | Q(kind="sla_credit", amount__lt=0),
                name="invoice_line_amount_sign",
            ),
            # The platform's fee is a share of the line: between 0 and the amount, on either side.
            models.CheckConstraint(
                condition=Q(fee_amount__gte=0, fee_amount__lte=F("amount"))
                | Q(fee_amount__lte=0, fee_amount__gte=F("amount")),
                name="invoice_line_fee_within_amount_signed",
            ),
        ]
        indexes = [models.Index(fields=["contract", "service_period"])]

    def __str__(self) -> str:
        return self.description

    @property
    def net_amount(self):
        return self.amount - self.fee_amount


class CreditNote(models.Model):
    """A correction of an issued invoice. The invoice itself never changes."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=32, unique=True)
    reason = models.TextField()
    amount = AmountField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="credit_note_amount_positive")]

    def __str__(self) -> str:
        return self.number


class CreditNoteLine(models.Model):
    """The share of a credit note that reverses one invoice line (and its provider split)."""

    credit_note = models.ForeignKey(CreditNote, on_delete=models.CASCADE, related_name="lines")
    invoice_line = models.ForeignKey(InvoiceLine, on_delete=models.PROTECT, related_name="credits")
    amount = AmountField()
    fee_amount = AmountField()
    statement = models.ForeignKey(
        "PayoutStatement",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="credit_lines",
        help_text="The provider statement that deducted it.",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="credit_line_amount_positive"),
            models.CheckConstraint(
                condition=Q(fee_amount__gte=0, fee_amount__lte=F("amount")), name="credit_line_fee_within_amount"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.amount} of line {self.invoice_line_id}"


class Payment(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    amount = AmountField()
    reference = models.CharField(max_length=128, blank=True, default="")
    received_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive")]

    def __str__(self) -> str:
        return f"{self.amount} for {self.invoice}"


class PayoutStatement(models.Model):
    """What a provider earned in a month: gross, the platform's fee, and net.

    Net is gross - fee plus ``carried_in``: the negative nets of earlier statements (credit
    notes larger than the sales of their month), which are not paid but deducted here. A
    statement whose net is negative is never paid; the next close carries it.
    """

    class Status(models.TextChoices):
        ISSUED = "issued", "Issued"  # computed at the close; the payout is due
        PAID = "paid", "Paid"  # the payout was sent
        CARRIED = "carried", "Carried forward"  # negative net, deducted by a later statement

    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="payout_statements")
    period = models.DateField()
    number = models.CharField(max_length=32, unique=True)
    gross = AmountField()
    fee = AmountField()
    carried_in = AmountField(default=0, help_text="Negative nets of earlier statements deducted here.")
    sla_credits = AmountField(
        default=0,
        db_default=0,
        help_text="SLA credits charged back (negative), already counted in gross, with the fee's share in fee.",
    )
    net = AmountField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ISSUED)
    carried_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="carried_from"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "period"], name="payout_one_per_provider_period"),
            models.CheckConstraint(
                condition=Q(net=F("gross") - F("fee") + F("carried_in")),
                name="payout_net_is_gross_less_fee_and_carried",
            ),
            models.CheckConstraint(condition=Q(carried_in__lte=0), name="payout_carried_in_non_positive"),
            models.CheckConstraint(condition=Q(sla_credits__lte=0), name="payout_sla_credits_non_positive"),
            models.CheckConstraint(
                condition=Q(status="carried", carried_into__isnull=False, net__lt=0)
                | (~Q(status="carried") & Q(carried_into__isnull=True)),
                name="payout_carried_has_target",
            ),
        ]

    def __str__(self) -> str:
        return self.number


class Account(models.Model):
    class Kind(models.TextChoices):
        LAB_RECEIVABLE = "lab_receivable", "Lab receivable"  # asset: what a lab owes
        PROVIDER_PAYABLE = "provider_payable", "Provider payable"  # liability: what we owe a provider
        PLATFORM_REVENUE = "platform_revenue", "Platform revenue"  # income: the fee
        CASH = "cash", "Cash"  # asset: money in the bank

    kind = models.CharField(max_length=32, choices=Kind.choices)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "organization"], name="account_unique_per_org"),
            models.UniqueConstraint(
                fields=["kind"], condition=Q(organization__isnull=True), name="account_unique_platform"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["lab_receivable", "provider_payable"], organization__isnull=False)
                | Q(kind__in=["platform_revenue", "cash"], organization__isnull=True),
                name="account_owner_matches_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}" + (f": {self.organization}" if self.organization_id else "")


class LedgerTransaction(models.Model):
    class Kind(models.TextChoices):
        INVOICE = "invoice", "Invoice issued"
        PAYMENT = "payment", "Payment received"
        CREDIT_NOTE = "credit_note", "Credit note"
        PAYOUT = "payout", "Payout sent"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    source_key = models.CharField(max_length=64, unique=True, help_text="What posted it; posted once.")
    memo = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.memo


class LedgerEntry(models.Model):
    """One leg of a transaction: positive is a debit, negative a credit. Legs sum to zero."""

    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT, related_name="entries")
    # (account, transaction) is indexed below: no index on account alone.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries", db_index=False)
    amount = AmountField()

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="ledger_entry_non_zero")]
        indexes = [models.Index(fields=["account", "transaction"])]

    def __str__(self) -> str:
        return f"{self.account}: {self.amount}"
