from django.db import models
from django.db.models import F, Q

from core.money import AmountField, PriceField
from marketplace.models import BillingMode, Cluster, GpuModel, Interconnect, Listing, ListingNode, Node, Organization


class ComputeRequest(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"  # waiting for the matching engine
        FILLED = "filled", "Filled"  # contracts written for all of it
        EXPIRED = "expired", "Expired"  # its start passed unfilled
        CANCELLED = "cancelled", "Cancelled"  # withdrawn by the lab while open

    class UnfilledReason(models.TextChoices):
        NO_OFFER = "no_offer", "No offer"  # no listing on its terms (model, mode, window, region...)
        NO_CAPACITY = "no_capacity", "Not enough capacity"  # listings, but too few free nodes
        PRICE_TOO_LOW = "price_too_low", "Maximum price too low"  # it would fill at a higher price
        # it would fill, but buying it would take the lab past its credit limit
        CREDIT_LIMIT_EXCEEDED = "credit_limit_exceeded", "Credit limit exceeded"

    lab = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="compute_requests")
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="compute_requests")
    gpu_count = models.PositiveIntegerField()
    starts_at = models.DateTimeField()
    duration_hours = models.PositiveIntegerField()
    ends_at = models.DateTimeField()
    max_price_per_gpu_hour = PriceField()
    billing_mode = models.CharField(max_length=16, choices=BillingMode.choices)
    colocated = models.BooleanField(default=True)
    region = models.CharField(max_length=63, blank=True, default="")
    interconnect = models.CharField(max_length=16, choices=Interconnect.choices, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    # Why the last matching run left this open request open (empty: no run has seen it yet),
    # and the price per GPU-hour at which it would have filled (None: at no price).
    unfilled_reason = models.CharField(max_length=32, choices=UnfilledReason.choices, blank=True, default="")
    unfilled_detail = models.CharField(max_length=255, blank=True, default="")
    fill_price_now = PriceField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    filled_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True, help_text="When it expired or was cancelled.")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="request_gpu_count_positive"),
            models.CheckConstraint(condition=Q(duration_hours__gte=1), name="request_duration_positive"),
            models.CheckConstraint(condition=Q(ends_at__gt=F("starts_at")), name="request_window_positive"),
            models.CheckConstraint(condition=Q(max_price_per_gpu_hour__gt=0), name="request_price_positive"),
        ]
        indexes = [
            models.Index(fields=["status", "gpu_model", "created_at"]),
            models.Index(fields=["lab", "status"]),
        ]

    def __str__(self) -> str:
        return f"Request {self.pk}: {self.gpu_count} x {self.gpu_model_id} ({self.status})"


class ContractQuerySet(models.QuerySet):
    def serving_during(self, starts_at, ends_at) -> "ContractQuerySet":
        """Contracts whose service, up to an early release, overlaps [starts_at, ends_at)."""
        return self.filter(starts_at__lt=ends_at, ends_at__gt=starts_at).exclude(
            released_at__isnull=False, released_at__lte=starts_at
        )


class Contract(models.Model):
    """The binding result of a fill or a booking. Its terms never change after creation."""

    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"  # signed; its window has not started
        ACTIVE = "active", "Active"  # inside its window
        COMPLETED = "completed", "Completed"  # its window ended
        TERMINATED = "terminated", "Terminated"  # a metered contract released early by the lab
        CANCELLED = "cancelled", "Cancelled"  # cancelled by an operator, with a reason

    # Single-column indexes on these keys are left out: wider indexes below lead with them,
    # and every index costs the matching engine's bulk writes.
    request = models.ForeignKey(
        ComputeRequest, null=True, blank=True, on_delete=models.PROTECT, related_name="contracts", db_index=False
    )
    listing = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="contracts", db_index=False)
    lab = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="contracts_bought", db_index=False)
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="contracts_sold", db_index=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="contracts")
    gpu_count = models.PositiveIntegerField()
    node_count = models.PositiveIntegerField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    price_per_gpu_hour = PriceField()
    billing_mode = models.CharField(max_length=16, choices=BillingMode.choices)
    total_amount = AmountField(null=True, blank=True, help_text="The whole block's price (committed contracts).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    released_at = models.DateTimeField(
        null=True, blank=True, help_text="When its nodes were freed early (termination or cancellation)."
    )
    cancel_reason = models.TextField(blank=True, default="")
    # The availability promise, inherited from the listing when the contract is written (a
    # trigger of migration 0009, whatever path writes it), so a later change of the listing
    # does not change a sold contract's terms (billing.sla).
    sla_availability = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True, editable=False)
    sla_breach_credit_rate = models.DecimalField(max_digits=4, decimal_places=2, null=True, blank=True, editable=False)
    # Handover (broker.handover): the keys and note the lab attached, for the provider to read
    # in the access manifest, and the provider's report that access is ready.
    access_keys = models.JSONField(
        default=list,
        db_default=[],
        blank=True,
        help_text="Copies of the SSH public keys the lab attached: name, fingerprint, key.",
    )
    access_note = models.TextField(
        blank=True, default="", db_default="", help_text="e.g. a Kubernetes namespace or Slurm account."
    )
    delivered_at = models.DateTimeField(null=True, blank=True)
    delivery_endpoint = models.CharField(max_length=500, blank=True, default="", db_default="")
    delivery_detail = models.TextField(blank=True, default="", db_default="")
    delivery_late_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was found undelivered DELIVERY_GRACE_MINUTES after its start."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ContractQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(ends_at__gt=F("starts_at")), name="contract_window_positive"),
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="contract_gpu_count_positive"),
            models.CheckConstraint(condition=Q(node_count__gte=1), name="contract_node_count_positive"),
            models.CheckConstraint(condition=Q(price_per_gpu_hour__gt=0), name="contract_price_positive"),
            models.CheckConstraint(
                condition=Q(billing_mode="metered", total_amount__isnull=True)
                | Q(billing_mode="committed", total_amount__isnull=False),
                name="contract_total_iff_committed",
            ),
            models.CheckConstraint(
                condition=~Q(status="cancelled") | ~Q(cancel_reason=""), name="contract_cancel_has_reason"
            ),
            # A fill writes at most one contract per listing for a request, so a re-delivered
            # matching task cannot write a second one.
            models.UniqueConstraint(
                fields=["request", "listing"],
                condition=Q(request__isnull=False),
                name="contract_one_per_request_listing",
            ),
        ]
        indexes = [
            models.Index(fields=["lab", "-created_at"]),
            models.Index(fields=["provider", "-created_at"]),
            models.Index(fields=["status", "starts_at"]),
            models.Index(fields=["status", "ends_at"]),
            models.Index(fields=["listing", "starts_at"]),  # a listing's contracts (its key has no index of its own)
            # Contracts by signing time: the market's recent trades and the daily price index.
            models.Index(fields=["created_at"], name="contract_signed"),
            # Contracts started and not delivered: the late-delivery sweep reads only these.
            models.Index(
                fields=["starts_at"],
                condition=Q(delivered_at__isnull=True, delivery_late_at__isnull=True),
                name="contract_awaiting_delivery",
            ),
            # A lab's contracts not yet over, with what its exposure needs, read from the index alone.
            models.Index(
                fields=["lab", "ends_at"],
                include=["starts_at", "released_at", "gpu_count", "price_per_gpu_hour", "billing_mode"],
                name="contract_lab_exposure",
            ),
        ]

    def __str__(self) -> str:
        return f"Contract {self.pk}: {self.gpu_count} GPUs {self.starts_at:%Y-%m-%d %H:%M}"


class AllocationQuerySet(models.QuerySet):
    def holding(self) -> "AllocationQuerySet":
        """Allocations that hold their node for at least an hour: one released before its
        start (equal bounds, an empty range) holds nothing."""
        return self.filter(ends_at__gt=F("starts_at"))

    def holding_during(self, starts_at, ends_at) -> "AllocationQuerySet":
        """Allocations that hold their node for some of [starts_at, ends_at)."""
        return self.holding().filter(starts_at__lt=ends_at, ends_at__gt=starts_at)


class Allocation(models.Model):
    """A node held for a contract over [starts_at, ends_at).

    PostgreSQL refuses two allocations of one node for overlapping hours (an exclusion
    constraint), and refuses an allocation whose node is not the node its listing reserved
    (a composite foreign key), so capacity cannot be sold twice whatever the code does. A
    second composite key keeps its listing that of its listing node, which search relies on.
    """

    # (contract, node) is unique and (node, starts_at) indexed: no single-column indexes.
    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="allocations", db_index=False)
    # The composite key (listing_node, node) -> listing node (id, node) checks both
    # columns at once (migration 0002), so the two single-column keys would check them again.
    listing_node = models.ForeignKey(
        ListingNode, on_delete=models.PROTECT, related_name="allocations", db_constraint=False
    )
    node = models.ForeignKey(
        Node, on_delete=models.PROTECT, related_name="allocations", db_index=False, db_constraint=False
    )
    # The listing of its listing node, kept here so search counts a listing's sold nodes from
    # one index. The composite key (listing_node, listing) -> listing node
    # (id, listing) holds it to that listing (migration 0005).
    listing = models.ForeignKey(
        Listing, on_delete=models.PROTECT, related_name="allocations", db_index=False, db_constraint=False
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    # Its listing node's depth (the composite key of migration 0011 holds it so): a node's hour
    # is sold at most once per depth. A resale (depth d + 1) sells hours its seller holds at
    # depth d; the deepest sale of an hour is the one that holds it (broker.resale).
    depth = models.PositiveSmallIntegerField(default=0, db_default=0, editable=False)

    objects = AllocationQuerySet.as_manager()

    class Meta:
        constraints = [
            # Equal bounds: released before it started; an empty range overlaps nothing.
            models.CheckConstraint(condition=Q(ends_at__gte=F("starts_at")), name="allocation_window_valid"),
            models.UniqueConstraint(fields=["contract", "node"], name="allocation_node_once_per_contract"),
        ]
        indexes = [
            models.Index(fields=["node", "starts_at"]),
            # A listing's nodes sold in a window (search), read from the index alone. Led by the
            # end, so sales that ended before the window (a listing's past) are not read.
            models.Index(fields=["listing", "ends_at", "starts_at", "listing_node"], name="allocation_listing_sold"),
        ]

    def __str__(self) -> str:
        return f"{self.node_id} for contract {self.contract_id}"


class FreeSpan(models.Model):
    """Hours over which a listing's reserved node is free to sell: its listing node's window,
    less the hours its node is allocated, as maximal ranges.

    Derived data, kept by triggers of PostgreSQL (migration 0008) in the transaction that
    changes the allocations or the listing nodes, and read by booking to find a listing's
    free nodes for a window without reading the rest of the listing (``broker.free_spans``).
    """

    listing = models.ForeignKey(
        Listing, on_delete=models.DO_NOTHING, related_name="+", db_index=False, db_constraint=False
    )
    listing_node = models.ForeignKey(
        ListingNode, on_delete=models.DO_NOTHING, related_name="+", db_index=False, db_constraint=False
    )
    node = models.ForeignKey(Node, on_delete=models.DO_NOTHING, related_name="+", db_index=False, db_constraint=False)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(ends_at__gt=F("starts_at")), name="freespan_hours_positive")]

    def __str__(self) -> str:
        return f"{self.node_id} free {self.starts_at:%Y-%m-%dT%H:%MZ} to {self.ends_at:%Y-%m-%dT%H:%MZ}"


class Incident(models.Model):
    """A node's failure or degradation, reported by its provider or its monitoring.

    An open failure cordons its node (status ``failed``) and replaces it in every contract
    holding it from the next whole hour (``broker.incidents``); the GPU-hours it took from
    contracts, from its start until a replacement or its resolution, are credited by the
    next close (``billing.sla``). A degradation is recorded and shown; the node keeps serving.
    """

    class Kind(models.TextChoices):
        FAILURE = "failure", "Failure"  # the node cannot serve: cordoned and replaced
        DEGRADED = "degraded", "Degraded"  # serving with reduced performance: recorded only

    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="incidents", db_index=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="incidents", db_index=False)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="incidents", db_index=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    started_at = models.DateTimeField(help_text="When the node stopped serving (or degraded), as reported.")
    resolved_at = models.DateTimeField(null=True, blank=True)
    detail = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(resolved_at__isnull=True) | Q(resolved_at__gte=F("started_at")),
                name="incident_resolved_after_start",
            ),
            # One open incident of a kind per node: a second report of the same failure is the same one.
            models.UniqueConstraint(
                fields=["node", "kind"], condition=Q(resolved_at__isnull=True), name="incident_one_open_per_node_kind"
            ),
        ]
        indexes = [
            models.Index(fields=["node", "started_at"]),
            models.Index(fields=["provider", "-started_at"]),
            models.Index(fields=["cluster", "started_at"]),
        ]

    def __str__(self) -> str:
        return f"Incident {self.pk}: {self.kind} on node {self.node_id}"


class Replacement(models.Model):
    """A contract's node swapped for another from an hour on, because of an incident. The
    contract's allocations keep the history (the failed node's ends at ``from_hour``, the
    replacement's starts there); this row says why, and when it was done."""

    incident = models.ForeignKey(Incident, on_delete=models.PROTECT, related_name="replacements")
    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="replacements")
    failed_node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+", db_index=False)
    replacement_node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+", db_index=False)
    from_hour = models.DateTimeField(help_text="The first hour the replacement serves.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["incident", "contract", "failed_node"], name="replacement_once_per_incident"
            )
        ]

    def __str__(self) -> str:
        return f"Contract {self.contract_id}: node {self.failed_node_id} -> {self.replacement_node_id}"


class Resale(models.Model):
    """A listing of hours a lab holds under a committed contract, put back on the market.

    The listing (depth d + 1) reserves nodes of the contract (allocations at depth d) for
    hours inside the ones the contract holds them; PostgreSQL refuses a resale reservation
    outside them (the trigger of migration 0011). The contract keeps its obligations to its
    own seller; a sale of the resale is a contract with the lab as seller (broker.resale).
    """

    listing = models.OneToOneField(Listing, on_delete=models.PROTECT, related_name="resale_of")
    contract = models.ForeignKey(Contract, on_delete=models.PROTECT, related_name="resales")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Listing {self.listing_id} resells contract {self.contract_id}"


class Quote(models.Model):
    """What the matching engine would fill now for a lab's terms, and at what price: the
    listings and GPUs of each (``lines``). Accepting it before ``expires_at`` books exactly
    that, at that price, if every part is still available; otherwise nothing (broker.quotes).
    A quote holds no capacity."""

    lab = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="quotes", db_index=False)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="+")
    gpu_count = models.PositiveIntegerField()
    starts_at = models.DateTimeField()
    duration_hours = models.PositiveIntegerField()
    ends_at = models.DateTimeField()
    colocated = models.BooleanField(default=True)
    region = models.CharField(max_length=63, blank=True, default="")
    billing_mode = models.CharField(max_length=16, choices=BillingMode.choices)
    lines = models.JSONField(
        help_text="The fill, in order: [{listing_id, gpu_count, price_per_gpu_hour}], prices as strings."
    )
    total_amount = AmountField(help_text="What the whole fill costs: GPUs x hours x price, summed over the lines.")
    average_price_per_gpu_hour = PriceField()
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    contract_ids = models.JSONField(default=list, blank=True, help_text="The contracts its acceptance wrote.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="quote_gpu_count_positive"),
            models.CheckConstraint(condition=Q(ends_at__gt=F("starts_at")), name="quote_window_positive"),
        ]
        indexes = [models.Index(fields=["lab", "-created_at"])]

    def __str__(self) -> str:
        return f"Quote {self.pk}: {self.gpu_count} x {self.gpu_model_id}"
