import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from django.utils.text import slugify

from broker.models import Allocation, ComputeRequest
from core.errors import InvalidInput, InvalidTransition
from core.money import validate_price
from core.services import audit_record
from core.timeutils import HORIZON_TEXT, current_hour, hours_between, is_whole_hour, within_horizon
from marketplace.models import (
    ApiKey,
    BillingMode,
    Cluster,
    GpuModel,
    Listing,
    ListingNode,
    Membership,
    Node,
    Organization,
)
from marketplace.selectors import KEY_PREFIX, hash_api_key

_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
LAST_USED_RESOLUTION = timedelta(minutes=1)

ROLE_FLAGS = {"provider": (True, False), "lab": (False, True), "both": (True, True)}


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    secret: str  # the whole key; shown once, never stored


def api_key_create(
    *,
    organization: Organization,
    name: str = "default",
    scope: str = ApiKey.Scope.FULL,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> IssuedApiKey:
    """Issue a new key for an organization. The returned secret is the only copy."""
    for _ in range(5):
        prefix = f"{KEY_PREFIX}_" + "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
        secret = f"{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                api_key = ApiKey.objects.create(
                    organization=organization, name=name, scope=scope, prefix=prefix, key_hash=hash_api_key(secret)
                )
                audit_record(
                    action="api_key_issued",
                    target=api_key,
                    actor=actor,
                    actor_label=actor_label,
                    message=f"for {organization.name}",
                )
        except IntegrityError:
            continue  # prefix collision: draw again
        return IssuedApiKey(api_key=api_key, secret=secret)
    raise RuntimeError("could not draw a unique API key prefix")


def api_key_revoke(*, api_key: ApiKey, actor: AbstractBaseUser | None = None, actor_label: str = "") -> ApiKey:
    """Revoke a key; requests using it are refused from now on. Revoking twice is a no-op."""
    with transaction.atomic():
        if ApiKey.objects.active().filter(pk=api_key.pk).update(revoked_at=timezone.now()):
            audit_record(action="api_key_revoked", target=api_key, actor=actor, actor_label=actor_label)
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record that a key was used, at most once a minute so reads stay reads."""
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


def organization_create(
    *,
    name: str,
    role: str,
    key_name: str = "default",
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> tuple[Organization, IssuedApiKey]:
    """Create an organization with one API key."""
    name = name.strip()
    if not name:
        raise InvalidInput("The name may not be blank.", fields={"name": ["This field may not be blank."]})
    if role not in ROLE_FLAGS:
        raise InvalidInput(f"Unknown role {role!r}.", fields={"role": ["Use provider, lab or both."]})
    is_provider, is_lab = ROLE_FLAGS[role]
    with transaction.atomic():
        if Organization.objects.filter(name__iexact=name).exists():
            raise InvalidInput(
                f"An organization named {name!r} exists.", fields={"name": ["An organization with this name exists."]}
            )
        organization = Organization.objects.create(name=name, is_provider=is_provider, is_lab=is_lab)
        issued = api_key_create(organization=organization, name=key_name, actor=actor, actor_label=actor_label)
    return organization, issued


def organization_set_status(
    *, organization: Organization, status: str, actor: AbstractBaseUser | None = None, actor_label: str = ""
) -> Organization:
    """Verify, suspend or reactivate an organization.

    A suspended one's keys stop working and its listings leave search and matching. As a lab
    it buys nothing more: its open compute requests are cancelled in the same transaction
    (one statement, audited on the organization), and reactivation does not reopen them.
    The matching engine also passes over any open request of a suspended lab
    (``broker.selectors.compute_requests_to_match``), so one committed in a race with the
    suspension is never filled while it lasts.
    """
    if status not in Organization.Status.values:
        raise InvalidTransition(f"Unknown status {status!r}.")
    with transaction.atomic():
        # The lab's open requests before the lab itself: the order the matching engine locks them.
        list(ComputeRequest.objects.select_for_update().filter(lab=organization, status=ComputeRequest.Status.OPEN))
        previous = Organization.objects.select_for_update().get(pk=organization.pk).status
        Organization.objects.filter(pk=organization.pk).update(status=status)
        organization.status = status
        if previous != status:
            audit_record(
                action=f"organization_{status}",
                target=organization,
                actor=actor,
                actor_label=actor_label,
                message=f"{previous} -> {status}",
            )
        if previous != status and status == Organization.Status.SUSPENDED:
            now = timezone.now()
            cancelled = ComputeRequest.objects.filter(lab=organization, status=ComputeRequest.Status.OPEN).update(
                status=ComputeRequest.Status.CANCELLED, closed_at=now
            )
            if cancelled:
                audit_record(
                    action="compute_requests_cancelled",
                    target=organization,
                    actor=actor,
                    actor_label=actor_label,
                    message=f"{cancelled} open compute request(s) cancelled by the suspension "
                    f"(closed_at {now.isoformat()})",
                )
    return organization


def organization_set_fee_rate(
    *, organization: Organization, rate: Decimal | None, actor: AbstractBaseUser | None = None, actor_label: str = ""
) -> Organization:
    """Override the platform fee taken from a provider's payouts (None: the default)."""
    if rate is not None and (
        not rate.is_finite() or not Decimal(0) <= rate < Decimal(1) or rate.as_tuple().exponent < -4
    ):
        raise InvalidInput(
            "A fee rate is a fraction in [0, 1) with at most 4 places, e.g. 0.05.",
            fields={"platform_fee_rate": ["Must be in [0, 1)."]},
        )
    return _organization_set(
        organization,
        "platform_fee_rate",
        rate,
        action="fee_rate_set",
        unset="default",
        actor=actor,
        actor_label=actor_label,
    )


def organization_set_credit_limit(
    *, organization: Organization, limit: Decimal | None, actor: AbstractBaseUser | None = None, actor_label: str = ""
) -> Organization:
    """Set the most a lab's exposure may reach (None: no limit); sales already made stand."""
    if limit is not None and (
        not limit.is_finite() or not Decimal(0) <= limit < Decimal("1e14") or limit % Decimal("0.01")
    ):
        raise InvalidInput(
            "A credit limit is an amount in whole cents, zero or more.",
            fields={"credit_limit": ["Whole cents, zero or more."]},
        )
    return _organization_set(
        organization,
        "credit_limit",
        limit,
        action="credit_limit_set",
        unset="no limit",
        actor=actor,
        actor_label=actor_label,
    )


def _organization_set(
    organization: Organization, field: str, value, *, action: str, unset: str, actor, actor_label: str
) -> Organization:
    """Write one of an operator's settings of an organization, audited as "old -> new"
    (``unset`` names an empty value)."""
    with transaction.atomic():
        previous = getattr(Organization.objects.select_for_update().get(pk=organization.pk), field)
        Organization.objects.filter(pk=organization.pk).update(**{field: value})
        setattr(organization, field, value)
        audit_record(
            action=action,
            target=organization,
            actor=actor,
            actor_label=actor_label,
            message=f"{unset if previous is None else previous} -> {unset if value is None else value}",
        )
    return organization


def membership_add(*, organization: Organization, username: str, email: str = "", role: str = "member") -> Membership:
    """Add a user (created if new) to an organization with a role."""
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username=username, defaults={"email": email})
    membership, created = Membership.objects.get_or_create(
        user=user, organization=organization, defaults={"role": role}
    )
    if not created and membership.role != role:
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


# --- Clusters and nodes ------------------------------------------------------------------

NODE_BATCH_SIZE = 5000
MAX_NODES_PER_CALL = 20000


def _hostnames_for(cluster: Cluster, count: int, hostnames: list[str] | None, start_index: int) -> list[str]:
    if hostnames is not None:
        if len(hostnames) != count:
            raise InvalidInput(
                f"Give exactly {count} hostnames or none.", fields={"hostnames": [f"Expected {count} hostnames."]}
            )
        if len(set(hostnames)) != len(hostnames):
            raise InvalidInput("Hostnames must be unique.", fields={"hostnames": ["Duplicate hostnames."]})
        return hostnames
    base = slugify(cluster.name)[:40] or "node"
    return [f"{base}-{cluster.pk}-{index:05d}" for index in range(start_index, start_index + count)]


def _nodes_bulk_create(*, cluster: Cluster, count: int, hostnames: list[str] | None, start_index: int) -> None:
    names = _hostnames_for(cluster, count, hostnames, start_index)
    try:
        with transaction.atomic():
            Node.objects.bulk_create(
                (Node(cluster=cluster, hostname=name) for name in names), batch_size=NODE_BATCH_SIZE
            )
    except IntegrityError:
        raise InvalidInput(
            "A hostname is already used in this cluster.", fields={"hostnames": ["Hostname already in use."]}
        )


def cluster_create(
    *,
    provider: Organization,
    name: str,
    gpu_model: GpuModel,
    region: str,
    interconnect: str,
    gpus_per_node: int,
    node_count: int,
    hostnames: list[str] | None = None,
) -> Cluster:
    """Register a cluster and its nodes, in bulk."""
    if not provider.is_provider:
        raise InvalidInput("Only providers register clusters.")
    if not 1 <= node_count <= MAX_NODES_PER_CALL:
        raise InvalidInput(f"node_count must be 1 to {MAX_NODES_PER_CALL}.", fields={"node_count": ["Out of range."]})
    with transaction.atomic():
        if Cluster.objects.filter(provider=provider, name=name).exists():
            raise InvalidInput("You already have a cluster with this name.", fields={"name": ["Already in use."]})
        try:
            with transaction.atomic():
                cluster = Cluster.objects.create(
                    provider=provider,
                    name=name,
                    gpu_model=gpu_model,
                    region=region,
                    interconnect=interconnect,
                    gpus_per_node=gpus_per_node,
                )
        except IntegrityError:  # the same name registered at the same moment
            raise InvalidInput("You already have a cluster with this name.", fields={"name": ["Already in use."]})
        _nodes_bulk_create(cluster=cluster, count=node_count, hostnames=hostnames, start_index=1)
    return cluster


def cluster_update(*, cluster: Cluster, name: str | None = None) -> Cluster:
    """Rename a cluster. Its hardware and place are facts of sold contracts and never change."""
    if name is not None and name != cluster.name:
        with transaction.atomic():
            if Cluster.objects.filter(provider_id=cluster.provider_id, name=name).exclude(pk=cluster.pk).exists():
                raise InvalidInput("You already have a cluster with this name.", fields={"name": ["Already in use."]})
            cluster.name = name
            try:
                with transaction.atomic():
                    cluster.save(update_fields=["name"])
            except IntegrityError:
                raise InvalidInput("You already have a cluster with this name.", fields={"name": ["Already in use."]})
    return cluster


def cluster_add_nodes(*, cluster: Cluster, count: int, hostnames: list[str] | None = None) -> int:
    """Add nodes to a cluster; returns how many were added."""
    if not 1 <= count <= MAX_NODES_PER_CALL:
        raise InvalidInput(f"count must be 1 to {MAX_NODES_PER_CALL}.", fields={"count": ["Out of range."]})
    with transaction.atomic():
        Cluster.objects.select_for_update().get(pk=cluster.pk)
        start_index = Node.objects.filter(cluster=cluster).count() + 1
        _nodes_bulk_create(cluster=cluster, count=count, hostnames=hostnames, start_index=start_index)
    return count


def _free_nodes_qs(*, cluster_id: int, starts_at: datetime, ends_at: datetime, exclude_listing_id: int | None = None):
    """In-service nodes of a cluster reserved by no listing and sold to no contract in the window."""
    reserved = ListingNode.objects.holding_during(starts_at, ends_at).filter(node_id=OuterRef("pk"))
    if exclude_listing_id is not None:
        reserved = reserved.exclude(listing_id=exclude_listing_id)
    sold = Allocation.objects.holding_during(starts_at, ends_at).filter(node_id=OuterRef("pk"))
    return (
        Node.objects.filter(cluster_id=cluster_id, status=Node.Status.IN_SERVICE)
        .exclude(Exists(reserved))
        .exclude(Exists(sold))
        .order_by("id")
    )


def node_set_status(*, node: Node, status: str, actor: AbstractBaseUser | None = None, actor_label: str = "") -> Node:
    """Take a node out of service or put it back.

    A node sold for a current or future hour cannot be taken out: that would break a
    running or promised workload. Unsold listing reservations move to a free node when one
    exists, so the listing can still deliver.
    """
    if status not in (Node.Status.IN_SERVICE, Node.Status.MAINTENANCE):
        raise InvalidInput(
            f"A node's status is set to in_service or maintenance; {status!r} is not one of them (a node is "
            "cordoned as failed only by a failure incident).",
            fields={"status": ["Use in_service or maintenance."]},
        )
    with transaction.atomic():
        Cluster.objects.select_for_update(no_key=True).get(pk=node.cluster_id)
        node = Node.objects.select_for_update().get(pk=node.pk)
        if node.status == status:
            return node
        if node.status == Node.Status.FAILED:
            raise InvalidTransition(
                f"Node {node.hostname} is cordoned by an open failure incident; resolving the incident returns it "
                "to service.",
                code="node_failed",
            )
        previous = node.status
        now = timezone.now()
        affected_listings = list(ListingNode.objects.filter(node=node).values_list("listing_id", flat=True))
        if status == Node.Status.MAINTENANCE:
            if Allocation.objects.holding().filter(node=node, ends_at__gt=now).exists():
                raise InvalidTransition(
                    f"Node {node.hostname} is sold for a current or future hour; it cannot go into maintenance.",
                    code="node_in_use",
                )
            node.status = status
            node.save(update_fields=["status"])
            for binding in ListingNode.objects.holding().filter(node=node, ends_at__gt=now).select_related("listing"):
                _reservation_move_off(binding)
        else:
            node.status = status
            node.save(update_fields=["status"])
        listing_inventory_changed(listing_ids=affected_listings)
        audit_record(
            action=f"node_{status}",
            target=node,
            actor=actor,
            actor_label=actor_label,
            message=f"{previous} -> {status}",
        )
    return node


def _reservation_move_off(binding: ListingNode) -> None:
    """Give a listing a free in-service node for the unsold rest of a reservation.

    A reservation never sold moves whole. One sold in the past keeps its history: it is
    released, and a new reservation covers the rest of the window from the current hour.
    When no node of the cluster is free, the listing simply delivers one node less.
    """
    start = max(binding.starts_at, current_hour())
    if start >= binding.ends_at:
        return
    sold_before = Allocation.objects.filter(listing_node=binding).exists()
    # A whole move needs the replacement free over the reservation's whole window.
    needed_from = start if sold_before else binding.starts_at
    replacement = (
        _free_nodes_qs(cluster_id=binding.node.cluster_id, starts_at=needed_from, ends_at=binding.ends_at)
        .exclude(listing_nodes__listing_id=binding.listing_id)
        .first()
    )
    if replacement is None:
        return
    try:
        with transaction.atomic():
            if not sold_before:
                binding.node = replacement
                binding.save(update_fields=["node"])
                return
            binding.released = True
            binding.save(update_fields=["released"])
            ListingNode.objects.create(
                listing_id=binding.listing_id, node=replacement, starts_at=start, ends_at=binding.ends_at
            )
    except IntegrityError:
        return  # taken at the same moment: the listing delivers one node less


def listing_inventory_changed(*, listing_ids) -> None:
    """Tell the matching engine that what these listings can deliver has changed."""
    Listing.objects.filter(pk__in=listing_ids).update(inventory_version=F("inventory_version") + 1)


# --- Listings ----------------------------------------------------------------------------


def validate_listing_window(*, starts_at: datetime, ends_at: datetime) -> None:
    """A listing's window (a provider's, or a resale's): whole UTC hours, not begun, inside the horizon."""
    fields = {}
    if not within_horizon(starts_at):
        fields["starts_at"] = [f"Must be within {HORIZON_TEXT}."]
    elif not is_whole_hour(starts_at):
        fields["starts_at"] = ["Must be a whole UTC hour (minutes and seconds zero)."]
    elif starts_at < current_hour():
        fields["starts_at"] = ["Must not be before the current hour."]
    if not within_horizon(ends_at):
        fields["ends_at"] = [f"Must be within {HORIZON_TEXT}."]
    elif not is_whole_hour(ends_at):
        fields["ends_at"] = ["Must be a whole UTC hour (minutes and seconds zero)."]
    elif ends_at <= starts_at:
        fields["ends_at"] = ["Must be after starts_at."]
    if fields:
        raise InvalidInput(next(iter(fields.values()))[0], fields=fields)


def validate_listing_terms(
    *, starts_at: datetime, ends_at: datetime, price_per_gpu_hour: Decimal, min_duration_hours: int
) -> None:
    """A listing's terms (a provider's, or a resale's): its window, its price, and a minimum
    booking from one hour to the whole window."""
    validate_listing_window(starts_at=starts_at, ends_at=ends_at)
    validate_price(price_per_gpu_hour, field="price_per_gpu_hour")
    window_hours = hours_between(starts_at, ends_at)
    if not 1 <= min_duration_hours <= window_hours:
        raise InvalidInput(
            f"min_duration_hours must be 1 to {window_hours} (the window's length).",
            fields={"min_duration_hours": [f"Must be between 1 and {window_hours}."]},
        )


def listing_create(
    *,
    provider: Organization,
    cluster: Cluster,
    node_count: int,
    starts_at: datetime,
    ends_at: datetime,
    price_per_gpu_hour: Decimal,
    billing_mode: str,
    min_duration_hours: int = 1,
    sla_availability: Decimal | None = None,
    sla_breach_credit_rate: Decimal | None = None,
) -> Listing:
    """Offer nodes of a cluster for a window, reserving specific free nodes for it. The
    availability promise and its credit rate default to the model's (99.00%, 1.50)."""
    if cluster.provider_id != provider.pk:
        raise InvalidInput("Unknown cluster.", fields={"cluster": ["No such cluster of yours."]})
    validate_listing_terms(
        starts_at=starts_at,
        ends_at=ends_at,
        price_per_gpu_hour=price_per_gpu_hour,
        min_duration_hours=min_duration_hours,
    )
    if billing_mode not in BillingMode.values:
        raise InvalidInput("Unknown billing mode.", fields={"billing_mode": ["Use committed or metered."]})
    if node_count < 1:
        raise InvalidInput("node_count must be at least 1.", fields={"node_count": ["Must be at least 1."]})
    promise = _validate_promise(sla_availability=sla_availability, sla_breach_credit_rate=sla_breach_credit_rate)
    with transaction.atomic():
        # One listing writer per cluster at a time: the free-node choice below stays valid.
        Cluster.objects.select_for_update().get(pk=cluster.pk)
        free_ids = list(
            _free_nodes_qs(cluster_id=cluster.pk, starts_at=starts_at, ends_at=ends_at).values_list("id", flat=True)[
                :node_count
            ]
        )
        if len(free_ids) < node_count:
            raise InvalidInput(
                f"Only {len(free_ids)} nodes of this cluster are in service and not already listed or sold "
                f"for the whole window.",
                fields={"node_count": [f"At most {len(free_ids)} nodes are free for this window."]},
            )
        listing = Listing.objects.create(
            provider=provider,
            cluster=cluster,
            node_count=node_count,
            starts_at=starts_at,
            ends_at=ends_at,
            price_per_gpu_hour=price_per_gpu_hour,
            min_duration_hours=min_duration_hours,
            billing_mode=billing_mode,
            **promise,
        )
        ListingNode.objects.bulk_create(
            [
                ListingNode(listing=listing, node_id=node_id, starts_at=starts_at, ends_at=ends_at)
                for node_id in free_ids
            ],
            batch_size=NODE_BATCH_SIZE,
        )
    return listing


# The availability promise a listing may make (percent of a contract's GPU-hours) and the
# multiple of the price credited per lost GPU-hour past it (billing.sla): bounds and places.
SLA_AVAILABILITY_RANGE = (Decimal("50"), Decimal("100"))
SLA_BREACH_CREDIT_RATE_RANGE = (Decimal("1"), Decimal("10"))


def _validate_promise(*, sla_availability: Decimal | None, sla_breach_credit_rate: Decimal | None) -> dict:
    """The promise's fields that were given, checked: each within its range, at most 2 places."""
    given = {}
    for name, value, (low, high) in (
        ("sla_availability", sla_availability, SLA_AVAILABILITY_RANGE),
        ("sla_breach_credit_rate", sla_breach_credit_rate, SLA_BREACH_CREDIT_RATE_RANGE),
    ):
        if value is None:
            continue
        if not value.is_finite() or not low <= value <= high or value.as_tuple().exponent < -2:
            raise InvalidInput(
                f"{name} is a number from {low} to {high} with at most 2 decimal places.",
                fields={name: [f"From {low} to {high}, at most 2 decimal places."]},
            )
        given[name] = value
    return given


# The status changes listing_update allows, and the audit action each one records.
_LISTING_TRANSITIONS = {
    (Listing.Status.ACTIVE, Listing.Status.PAUSED): "listing_paused",
    (Listing.Status.PAUSED, Listing.Status.ACTIVE): "listing_resumed",
}


def listing_update(
    *,
    listing: Listing,
    price_per_gpu_hour: Decimal | None = None,
    status: str | None = None,
    sla_availability: Decimal | None = None,
    sla_breach_credit_rate: Decimal | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> Listing:
    """Reprice, pause or resume a listing, or change its availability promise. Contracts
    already written keep their terms (a contract copies the promise when it is written)."""
    promise = _validate_promise(sla_availability=sla_availability, sla_breach_credit_rate=sla_breach_credit_rate)
    with transaction.atomic():
        listing = Listing.objects.select_for_update().get(pk=listing.pk)
        if listing.status == Listing.Status.WITHDRAWN:
            raise InvalidTransition("A withdrawn listing cannot change.")
        changes: list[tuple[str, str]] = []  # (audit action, message)
        update_fields = ["updated_at"]
        if price_per_gpu_hour is not None:
            validate_price(price_per_gpu_hour, field="price_per_gpu_hour")
            if price_per_gpu_hour != listing.price_per_gpu_hour:
                changes.append(("listing_repriced", f"{listing.price_per_gpu_hour} -> {price_per_gpu_hour}"))
            listing.price_per_gpu_hour = price_per_gpu_hour
            update_fields.append("price_per_gpu_hour")
        for name, value in promise.items():
            if value != getattr(listing, name):
                changes.append(("listing_promise_changed", f"{name} {getattr(listing, name)} -> {value}"))
            setattr(listing, name, value)
            update_fields.append(name)
        if status is not None and status != listing.status:
            action = _LISTING_TRANSITIONS.get((listing.status, status))
            if action is None:
                raise InvalidTransition(
                    f"A listing cannot go from {listing.status} to {status}; use withdraw to end it.",
                    fields={"status": ["Use active or paused."]},
                )
            changes.append((action, f"{listing.status} -> {status}"))
            listing.status = status
            update_fields.append("status")
        if len(update_fields) > 1:  # nothing given, nothing written
            listing.save(update_fields=update_fields)
        for action, message in changes:
            audit_record(action=action, target=listing, actor=actor, actor_label=actor_label, message=message)
    return listing


def listing_withdraw(*, listing: Listing, actor: AbstractBaseUser | None = None, actor_label: str = "") -> Listing:
    """End a listing for good and release its unsold nodes. Sold nodes stay sold."""
    with transaction.atomic():
        # Releasing the reservations rebuilds the free spans of every listing reserving the same
        # nodes (a resale's parent, resales of it), which locks them: lock them all first, with
        # this one, in id order, the order the matching engine and quote acceptance lock in.
        sharing = ListingNode.objects.holding().filter(
            node_id__in=ListingNode.objects.holding().filter(listing_id=listing.pk).values("node_id")
        )
        list(
            Listing.objects.select_for_update()
            .filter(Q(pk=listing.pk) | Q(pk__in=sharing.values("listing_id")))
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        listing = Listing.objects.get(pk=listing.pk)
        if listing.status == Listing.Status.WITHDRAWN:
            return listing
        previous = listing.status
        listing.status = Listing.Status.WITHDRAWN
        listing.save(update_fields=["status", "updated_at"])
        released = listing.listing_nodes.holding().update(released=True)
        audit_record(
            action="listing_withdrawn",
            target=listing,
            actor=actor,
            actor_label=actor_label,
            message=f"{previous} -> {listing.status}; {released} reservations released",
        )
    return listing
