from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import F, Q

from core.money import AmountField, PriceField, RateField

REGION_VALIDATOR = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$", "Use lowercase letters, digits and dashes, e.g. us-south-1."
)
HOSTNAME_VALIDATOR = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$", "Use letters, digits, dots and dashes.")


def default_credit_limit():
    """A new organization's credit limit: the setting DEFAULT_CREDIT_LIMIT (None: no limit)."""
    return settings.DEFAULT_CREDIT_LIMIT


class MeasuredReliability(models.Model):
    """Reliability measured over the last 30 days, from incidents and deliveries: the
    statements of broker.reliability set these again on every incident and hourly. None until
    first measured; never edited by hand."""

    availability_30d = models.DecimalField(
        max_digits=7,
        decimal_places=4,
        null=True,
        blank=True,
        editable=False,
        help_text="Percent of node-hours in service over the last 30 days (failures count against it).",
    )
    mean_time_to_replace_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="Mean seconds from a failure's start to its replacement node, over the last 30 days.",
    )
    late_deliveries_30d = models.PositiveIntegerField(
        default=0,
        db_default=0,
        editable=False,
        help_text="Contracts delivered late (or not at all) in the last 30 days.",
    )
    reliability_measured_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        abstract = True


class Organization(MeasuredReliability):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"  # can trade; not yet checked by an operator
        VERIFIED = "verified", "Verified"  # checked by an operator
        SUSPENDED = "suspended", "Suspended"  # keys refused, listings hidden

    name = models.CharField(max_length=200, unique=True)
    is_provider = models.BooleanField(default=False)
    is_lab = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    platform_fee_rate = RateField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="Overrides PLATFORM_FEE_RATE for this provider's payouts when set.",
    )
    credit_limit = AmountField(
        null=True,
        blank=True,
        default=default_credit_limit,
        validators=[MinValueValidator(0)],
        help_text="The most this lab may owe and have committed (its exposure, see billing.credit); "
        "empty for no limit. New labs start at DEFAULT_CREDIT_LIMIT.",
    )
    # The lab's exposure, kept by its sales and set again by every other change to it
    # (billing.credit, where LAB_EXPOSURE defines it): exact values, rounded when shown.
    exposure_committed = models.DecimalField(max_digits=24, decimal_places=4, default=0, editable=False)
    exposure_metered = models.DecimalField(max_digits=24, decimal_places=4, default=0, editable=False)
    exposure_unpaid = models.DecimalField(max_digits=24, decimal_places=4, default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(is_provider=True) | Q(is_lab=True), name="organization_has_a_role"),
            models.CheckConstraint(
                condition=Q(platform_fee_rate__isnull=True) | Q(platform_fee_rate__gte=0, platform_fee_rate__lt=1),
                name="organization_fee_rate_range",
            ),
            models.CheckConstraint(
                condition=Q(credit_limit__isnull=True) | Q(credit_limit__gte=0),
                name="organization_credit_limit_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # The exposure figures are written only in SQL, by sales and refreshes: a save of a
        # row read before a sale committed must not set them back.
        if not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                field.name for field in self._meta.concrete_fields if not field.primary_key and field.editable
            ]
        super().save(*args, **kwargs)

    @property
    def role(self) -> str:
        if self.is_provider and self.is_lab:
            return "both"
        return "provider" if self.is_provider else "lab"


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"  # manages keys and members
        ADMIN = "admin", "Admin"  # manages capacity, requests and keys
        MEMBER = "member", "Member"  # reads

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.organization} ({self.role})"


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> "ApiKeyQuerySet":
        """Keys not revoked."""
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    class Scope(models.TextChoices):
        FULL = "full", "Full"  # reads and writes, mints and revokes keys
        READ_ONLY = "read_only", "Read-only"  # GET only: dashboards, monitoring, auditors

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, default="default")
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.FULL)
    prefix = models.CharField(max_length=16, unique=True, help_text="Public part of the key, shown in lists.")
    key_hash = models.CharField(max_length=64, help_text="SHA-256 of the whole key; the secret is never stored.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class SshKey(models.Model):
    """A lab's SSH public key, attached by the lab to its contracts for the provider to install
    (the contract's access manifest). Only public keys: a private key is refused."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=100)
    public_key = models.TextField(help_text="One OpenSSH public key line: type, base64 body, optional comment.")
    fingerprint = models.CharField(max_length=64, help_text="SHA256:<base64>, as ssh-keygen -l prints it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "SSH key"
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="ssh_key_name_unique_per_org"),
            models.UniqueConstraint(fields=["organization", "fingerprint"], name="ssh_key_unique_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class GpuModel(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    vendor = models.CharField(max_length=32)
    memory_gb = models.PositiveIntegerField()
    bf16_tflops = models.PositiveIntegerField(help_text="Peak dense BF16 TFLOPS per GPU.")

    class Meta:
        ordering = ["vendor", "name"]
        verbose_name = "GPU model"

    def __str__(self) -> str:
        return self.name


class Interconnect(models.TextChoices):
    INFINIBAND = "infiniband", "InfiniBand"
    ROCE = "roce", "RoCE"
    ETHERNET = "ethernet", "Ethernet"


class Cluster(MeasuredReliability):
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="clusters")
    name = models.CharField(max_length=100)
    gpu_model = models.ForeignKey(GpuModel, on_delete=models.PROTECT, related_name="clusters")
    region = models.CharField(max_length=63, validators=[REGION_VALIDATOR])
    interconnect = models.CharField(max_length=16, choices=Interconnect.choices)
    gpus_per_node = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(64)])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="cluster_name_unique_per_provider"),
            models.CheckConstraint(
                condition=Q(gpus_per_node__gte=1, gpus_per_node__lte=64), name="cluster_gpus_per_node_range"
            ),
        ]
        indexes = [models.Index(fields=["gpu_model", "region", "interconnect"])]

    def __str__(self) -> str:
        return self.name


class Node(models.Model):
    class Status(models.TextChoices):
        IN_SERVICE = "in_service", "In service"  # can be listed and sold
        MAINTENANCE = "maintenance", "Maintenance"  # taken out by its provider
        FAILED = "failed", "Failed"  # cordoned by an open failure incident (broker.incidents)

    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="nodes")
    hostname = models.CharField(max_length=253, validators=[HOSTNAME_VALIDATOR])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_SERVICE)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "hostname"], name="node_hostname_unique_per_cluster"),
        ]
        indexes = [
            models.Index(fields=["cluster", "status"]),
            # Search looks up the few nodes out of service, not the many in it.
            models.Index(fields=["status"], condition=~Q(status="in_service"), name="node_out_of_service"),
        ]

    def __str__(self) -> str:
        return self.hostname


class BillingMode(models.TextChoices):
    COMMITTED = "committed", "Committed"  # take-or-pay for the whole booked block
    METERED = "metered", "Metered"  # reported GPU-seconds; may release early


class ListingQuerySet(models.QuerySet):
    def of_trading_providers(self) -> "ListingQuerySet":
        """Listings whose provider is not suspended."""
        return self.exclude(provider__status=Organization.Status.SUSPENDED)

    def on_offer(self) -> "ListingQuerySet":
        """Active listings of providers not suspended: what labs may see and buy."""
        return self.filter(status=Listing.Status.ACTIVE).of_trading_providers()


class Listing(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"  # offered in search and to the matching engine
        PAUSED = "paused", "Paused"  # hidden for now; its nodes stay reserved for it
        WITHDRAWN = "withdrawn", "Withdrawn"  # final; unsold nodes released

    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="listings")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="listings")
    node_count = models.PositiveIntegerField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    price_per_gpu_hour = PriceField()
    min_duration_hours = models.PositiveIntegerField(default=1)
    billing_mode = models.CharField(max_length=16, choices=BillingMode.choices)
    sla_availability = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=Decimal("99.00"),
        db_default=Decimal("99.00"),
        validators=[MinValueValidator(Decimal("50")), MaxValueValidator(Decimal("100"))],
        help_text="The availability promised, in percent of the contract's GPU-hours (billing.sla).",
    )
    sla_breach_credit_rate = models.DecimalField(
        max_digits=4,
        decimal_places=2,
        default=Decimal("1.50"),
        db_default=Decimal("1.50"),
        validators=[MinValueValidator(Decimal("1")), MaxValueValidator(Decimal("10"))],
        help_text="The multiple of the price credited per lost GPU-hour once a contract's lost hours "
        "exceed the promise (billing.sla); below it, lost hours are credited at the price.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # 0 for a provider's own capacity; a resale of capacity bought at depth d is at d + 1
    # (broker.resale). Each depth has its own reservations and sales of a node's hours.
    depth = models.PositiveSmallIntegerField(
        default=0,
        db_default=0,
        editable=False,
        help_text="0: the provider's own nodes; 1 or more: capacity resold by a buyer (how many sales deep).",
    )
    inventory_version = models.PositiveBigIntegerField(
        default=0, help_text="Bumped whenever what this listing can deliver changes (a sale, a release, a node)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ListingQuerySet.as_manager()

    class Meta:
        ordering = ["price_per_gpu_hour", "starts_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(ends_at__gt=F("starts_at")), name="listing_window_positive"),
            models.CheckConstraint(condition=Q(node_count__gte=1), name="listing_node_count_positive"),
            models.CheckConstraint(condition=Q(price_per_gpu_hour__gt=0), name="listing_price_positive"),
            models.CheckConstraint(condition=Q(min_duration_hours__gte=1), name="listing_min_duration_positive"),
            models.CheckConstraint(
                condition=Q(sla_availability__gte=50, sla_availability__lte=100), name="listing_sla_availability_range"
            ),
            models.CheckConstraint(
                condition=Q(sla_breach_credit_rate__gte=1, sla_breach_credit_rate__lte=10),
                name="listing_sla_breach_rate_range",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "price_per_gpu_hour", "starts_at"]),
            models.Index(fields=["cluster", "status"]),
        ]

    def __str__(self) -> str:
        return f"Listing {self.pk}: {self.node_count} x {self.cluster} @ {self.price_per_gpu_hour}"

    @property
    def resale(self) -> bool:
        """Hours a buyer resells (broker.resale), not a provider's own nodes."""
        return self.depth > 0


class ListingNodeQuerySet(models.QuerySet):
    def holding(self) -> "ListingNodeQuerySet":
        """Reservations that hold their node: a released one (its listing withdrawn, or its
        node replaced) holds nothing."""
        return self.filter(released=False)

    def holding_during(self, starts_at, ends_at) -> "ListingNodeQuerySet":
        """Reservations that hold their node for some of [starts_at, ends_at)."""
        return self.holding().filter(starts_at__lt=ends_at, ends_at__gt=starts_at)

    def sellable(self) -> "ListingNodeQuerySet":
        """Reservations that can be sold: holding a node that is in service."""
        return self.holding().filter(node__status=Node.Status.IN_SERVICE)


class ListingNode(models.Model):
    """A node reserved for a listing over the listing's window.

    An exclusion constraint keeps a node in at most one unreleased listing for any hour,
    so a provider can never list more nodes than it has. Contracts allocate nodes through
    these rows only, so a listing can never sell more than its node_count.
    """

    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="listing_nodes")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="listing_nodes")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    released = models.BooleanField(default=False)
    # Its listing's depth (a composite key holds it so): a node is reserved at most once per
    # depth for any hour, so a resale's reservation never clashes with the one it resells.
    depth = models.PositiveSmallIntegerField(default=0, db_default=0, editable=False)

    objects = ListingNodeQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["listing", "node"], name="listing_node_unique"),
            models.CheckConstraint(condition=Q(ends_at__gt=F("starts_at")), name="listing_node_window_positive"),
        ]
        indexes = [models.Index(fields=["node", "starts_at"])]

    def __str__(self) -> str:
        return f"{self.node_id} in listing {self.listing_id}"


class IdempotencyRecord(models.Model):
    """The first response to a POST carrying an Idempotency-Key, replayed on retries."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    response_status = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True, help_text="Records kept before the bytes were: replayed re-encoded.")
    response_content = models.BinaryField(null=True, help_text="The response's bytes, replayed as they were sent.")
    withheld = models.BooleanField(
        default=False, help_text="The response carried a secret: not kept, so a retry is answered 409, not replayed."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "key"], name="idempotency_key_unique_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}:{self.key}"
