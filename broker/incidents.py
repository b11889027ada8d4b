"""Node incidents: a provider's report that a node failed or degraded, and break-fix.

An open failure cordons its node (``failed``: out of service, so search, booking and the
matching engine pass over it) and replaces it, from the next whole hour, in every contract
holding it, in one transaction:

1. **A spare of the same listing.** A node the contract's listing reserves, in service, free
   for the whole window ``[max(from_hour, start), end)`` (one of its free spans contains it:
   ``broker.free_spans.FREE_NODES``) and not already in the contract.
2. **An unlisted node.** Otherwise, an in-service node of the cluster that no listing reserves
   and nobody bought for the rest of the failed node's reservation takes that reservation
   over: the failed node's reservation is released and the new node reserved for the listing
   from ``from_hour`` (or the reservation's start) to its end, and every sale of the failed
   node in those hours that no spare took moves onto it. So the listing reserves exactly
   ``node_count`` nodes in every hour, before and after the failed node's return (a node
   reserved for one contract's hours only would let the listing sell one node more once the
   failed node is back, and a listing reserves a node once: ``listing_node_unique``).
3. **None.** The contract keeps its allocation on the failed node; billing credits the lost
   hours (``billing.sla``).

Resold hours (``broker.resale``) are held at several depths: the deepest sale of an hour holds
it. Allocations are replaced deepest first, a resale's from the spares of its own listing
(nodes its seller still holds) and never from unlisted nodes; a contract whose node's hours
stay sold on by a resale that found no spare keeps the node too, so an hour never ends up
held by a buyer at one depth and sold again at the depth above. A resale's unsold
reservations of the failed node are released.

A replaced allocation is cut at ``max(from_hour, its start)`` (one not yet started keeps no
hours: equal bounds), so a contract's allocations say which node served which hours; a
``Replacement`` row says why. The failed node's unsold reservations then move to a free node
when there is one (``marketplace.services._reservation_move_off``, as for maintenance).

The cluster, the node (both FOR NO KEY UPDATE, which a sale's key checks do not wait for), the
contracts and the listings concerned are locked in that order
before the node's allocations are read (again, once the listings are locked, so a sale that
held one of them is replaced too). A sale that waited for those locks read the node in its
own earlier snapshot: the database refuses an allocation of a node out of service on its
latest row (the trigger of migration 0010), and the sale chooses again. The exclusion
constraints still have the last word, and a refused write retries its choice, a bounded
number of times.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef
from django.db.models.functions import Greatest
from django.utils import timezone

from broker.free_spans import FREE_NODES
from broker.handover import contract_data
from broker.models import Allocation, Contract, Incident, Replacement
from core.errors import InvalidInput, NotFound
from core.services import audit_record
from core.timeutils import current_hour, next_hour
from events.models import EventType
from events.services import Notice, events_publish
from marketplace.models import Cluster, Listing, ListingNode, Node, Organization
from marketplace.services import _free_nodes_qs, _reservation_move_off, listing_inventory_changed

CLOCK_SKEW = timedelta(minutes=5)  # how far in the future a reported start may be (clocks differ)
MAX_AGE = timedelta(days=7)  # how far back an incident may be reported
SPARE_CANDIDATES = 8  # spare nodes read per contract beyond its own nodes
WRITE_ATTEMPTS = 3  # choices made again when a write is refused by a constraint


@dataclass(frozen=True)
class IncidentOpened:
    incident: Incident
    created: bool  # False: the node already had this kind of incident open, and this is it


def incident_start_validate(started_at: datetime) -> None:
    """Refuse (InvalidInput) a reported start in the future (beyond the clock skew) or too old."""
    _validate_moment(started_at, field="started_at", now=timezone.now())


def _validate_moment(value: datetime, *, field: str, now: datetime) -> None:
    if value > now + CLOCK_SKEW:
        raise InvalidInput(
            f"{field} is in the future; at most {int(CLOCK_SKEW.total_seconds() // 60)} minutes of clock skew "
            "is allowed.",
            fields={field: ["Must not be in the future."]},
        )
    if value < now - MAX_AGE:
        raise InvalidInput(
            f"{field} is more than {MAX_AGE.days} days ago; incidents are reported within {MAX_AGE.days} days.",
            fields={field: [f"Must be within the last {MAX_AGE.days} days."]},
        )


def incident_data(incident: Incident, hostname: str) -> dict:
    """An incident as events show it."""
    return {
        "object": "incident",
        "id": incident.pk,
        "kind": incident.kind,
        "cluster_id": incident.cluster_id,
        "node_id": incident.node_id,
        "hostname": hostname,
        "started_at": incident.started_at,
        "resolved_at": incident.resolved_at,
        "detail": incident.detail,
    }


def _labs_served_by(node_id: int, now: datetime) -> list[int]:
    """Labs of the live contracts the node holds now or later."""
    return list(
        Allocation.objects.holding()
        .filter(node_id=node_id, ends_at__gt=now)
        .values_list("contract__lab_id", flat=True)
        .distinct()
        .order_by("contract__lab_id")
    )


def _incident_notices(incident: Incident, hostname: str, event_type: str, lab_ids: list[int]) -> list[Notice]:
    data = incident_data(incident, hostname)
    organizations = sorted({incident.provider_id, *lab_ids})
    return [
        Notice(org_id, event_type, data, dedupe_key=f"{event_type}:{incident.pk}:{org_id}") for org_id in organizations
    ]


def _measure_on_commit(*, cluster_id: int, provider_id: int) -> None:
    from broker.reliability import reliability_measure

    transaction.on_commit(lambda: reliability_measure(cluster_ids=[cluster_id], provider_ids=[provider_id]))


def incident_open(
    *,
    provider: Organization,
    node: Node,
    kind: str,
    started_at: datetime,
    detail: str = "",
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> IncidentOpened:
    """Report a node's failure or degradation.

    A failure cordons the node and replaces it in every contract holding it from the next
    whole hour (see the module). Reporting again what is open (same node, same kind) answers
    the open incident, unchanged.
    """
    if kind not in Incident.Kind.values:
        raise InvalidInput(f"Unknown kind {kind!r}.", fields={"kind": ["Use failure or degraded."]})
    now = timezone.now()
    _validate_moment(started_at, field="started_at", now=now)
    with transaction.atomic():
        # FOR NO KEY UPDATE: it serializes with the cluster's other writers (listing_create,
        # node_set_status) but not with the key checks of a sale writing its contract, which
        # would wait for it while holding the listing this waits for.
        cluster = Cluster.objects.select_for_update(no_key=True).filter(pk=node.cluster_id).first()
        if cluster is None or cluster.provider_id != provider.pk:
            raise NotFound("No such node in your clusters.")
        node = Node.objects.select_for_update(no_key=True).get(pk=node.pk)
        existing = Incident.objects.filter(node=node, kind=kind, resolved_at__isnull=True).first()
        if existing is not None:
            return IncidentOpened(existing, created=False)
        try:
            with transaction.atomic():
                incident = Incident.objects.create(
                    provider=provider, cluster=cluster, node=node, kind=kind, started_at=started_at, detail=detail
                )
        except IntegrityError:  # opened at the same moment (incident_one_open_per_node_kind)
            return IncidentOpened(Incident.objects.get(node=node, kind=kind, resolved_at__isnull=True), created=False)
        lab_ids = _labs_served_by(node.pk, now)
        replaced = 0
        if kind == Incident.Kind.FAILURE:
            if node.status == Node.Status.IN_SERVICE:
                node.status = Node.Status.FAILED
                node.save(update_fields=["status"])
            replaced = len(node_replace(incident=incident, node=node))
        events_publish(_incident_notices(incident, node.hostname, EventType.INCIDENT_OPENED, lab_ids))
        audit_record(
            action=f"incident_opened_{kind}",
            target=incident,
            actor=actor,
            actor_label=actor_label,
            message=f"node {node.hostname}; {replaced} contract(s) given a replacement node",
        )
        _measure_on_commit(cluster_id=cluster.pk, provider_id=provider.pk)
    return IncidentOpened(incident, created=True)


def incident_resolve(
    *,
    provider: Organization,
    incident: Incident,
    resolved_at: datetime | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> Incident:
    """Close an incident. A failed node returns to service (its replacements stand).
    Resolving a resolved incident answers it unchanged."""
    now = timezone.now()
    with transaction.atomic():
        cluster = Cluster.objects.select_for_update(no_key=True).get(pk=incident.cluster_id)
        if cluster.provider_id != provider.pk:
            raise NotFound("No such incident of yours.")
        node = Node.objects.select_for_update(no_key=True).get(pk=incident.node_id)
        incident = Incident.objects.select_for_update().get(pk=incident.pk)
        if incident.resolved_at is not None:
            return incident
        resolved_at = now if resolved_at is None else resolved_at
        if resolved_at > now + CLOCK_SKEW:
            raise InvalidInput("resolved_at is in the future.", fields={"resolved_at": ["Must not be in the future."]})
        if resolved_at < incident.started_at:
            raise InvalidInput(
                "resolved_at is before the incident started.",
                fields={"resolved_at": ["Must not be before started_at."]},
            )
        incident.resolved_at = resolved_at
        incident.save(update_fields=["resolved_at"])
        if (
            incident.kind == Incident.Kind.FAILURE
            and node.status == Node.Status.FAILED
            and not Incident.objects.filter(node=node, kind=Incident.Kind.FAILURE, resolved_at__isnull=True).exists()
        ):
            node.status = Node.Status.IN_SERVICE
            node.save(update_fields=["status"])
            listing_inventory_changed(
                listing_ids=ListingNode.objects.holding().filter(node=node).values_list("listing_id", flat=True)
            )
        lab_ids = _labs_served_by(node.pk, now)
        events_publish(_incident_notices(incident, node.hostname, EventType.INCIDENT_RESOLVED, lab_ids))
        audit_record(
            action="incident_resolved",
            target=incident,
            actor=actor,
            actor_label=actor_label,
            message=f"node {node.hostname} ({incident.kind}) resolved at {resolved_at.isoformat()}",
        )
        _measure_on_commit(cluster_id=cluster.pk, provider_id=cluster.provider_id)
    return incident


# --- Break-fix -------------------------------------------------------------------------------


@dataclass
class _Move:
    allocation: Allocation
    starts_at: datetime  # the first hour the replacement serves
    listing_node_id: int
    node_id: int


def node_replace(*, incident: Incident, node: Node) -> list[Replacement]:
    """Replace a cordoned node, from the next whole hour, in every contract holding it.

    Runs inside ``incident_open``'s transaction, the cluster and the node locked. Writes are
    set-wise: one statement cuts the failed node's allocations, one writes the replacements'
    allocations, one the Replacement rows, one the events.
    """
    from_hour = next_hour()
    allocations = _held_from(node, from_hour)
    reservations = list(
        ListingNode.objects.holding().filter(node=node, ends_at__gt=current_hour()).order_by("listing_id")
    )
    listing_ids = sorted({a.listing_id for a in allocations} | {r.listing_id for r in reservations})
    if allocations:
        # The order every writer takes: contracts, then their listings (a release takes its
        # contract, then its listing through the spans' triggers).
        list(
            Contract.objects.select_for_update()
            .filter(pk__in={a.contract_id for a in allocations})
            .order_by("pk")
            .values_list("pk", flat=True)
        )
    list(Listing.objects.select_for_update().filter(pk__in=listing_ids).order_by("pk").values_list("pk", flat=True))
    # Read again now that the listings are locked: a sale that held one of them while the node
    # was being cordoned has committed, and its allocation is replaced too. (A sale after this
    # point reads the node failed: the trigger of migration 0010 refuses it.)
    known = {a.contract_id for a in allocations}
    allocations = _held_from(node, from_hour)
    fresh = sorted({a.contract_id for a in allocations} - known)
    if fresh:
        list(Contract.objects.select_for_update().filter(pk__in=fresh).order_by("pk").values_list("pk", flat=True))
    replacements: list[Replacement] = []
    for attempt in range(WRITE_ATTEMPTS):
        try:
            with transaction.atomic():
                replacements = _replace(incident=incident, node=node, allocations=allocations, from_hour=from_hour)
            break
        except IntegrityError:
            if attempt == WRITE_ATTEMPTS - 1:
                raise
            allocations = _held_from(node, from_hour)  # a node was taken meanwhile: choose again
    for binding in (
        ListingNode.objects.holding()
        .filter(node=node, ends_at__gt=current_hour())
        .exclude(Exists(Allocation.objects.holding().filter(listing_node_id=OuterRef("pk"), ends_at__gt=from_hour)))
        .select_related("listing", "node")
        .order_by("listing_id")
    ):
        if binding.depth:  # a resale's: its seller may no longer hold the node
            ListingNode.objects.filter(pk=binding.pk).update(released=True)
        else:
            _reservation_move_off(binding)
    listing_inventory_changed(listing_ids=listing_ids)
    return replacements


def _held_from(node: Node, from_hour: datetime) -> list[Allocation]:
    """The node's allocations that hold it from ``from_hour`` on: the deepest resales first,
    then contracts in start order."""
    return list(
        Allocation.objects.holding()
        .filter(node=node, ends_at__gt=from_hour)
        .select_related("contract")
        .order_by("-depth", "contract__starts_at", "contract_id")
    )


def _spare(*, listing_id: int, starts_at: datetime, ends_at: datetime, exclude: set[int]) -> tuple[int, int] | None:
    """A node the listing reserves, in service and free for the whole window, not in ``exclude``:
    (listing node id, node id)."""
    with connection.cursor() as cursor:
        cursor.execute(
            FREE_NODES,
            {
                "listing": listing_id,
                "starts_at": starts_at,
                "ends_at": ends_at,
                "limit": SPARE_CANDIDATES + len(exclude),
                "node_in_service": Node.Status.IN_SERVICE,
            },
        )
        for listing_node_id, node_id in cursor.fetchall():
            if node_id not in exclude:
                return listing_node_id, node_id
    return None


def _replace(
    *, incident: Incident, node: Node, allocations: list[Allocation], from_hour: datetime
) -> list[Replacement]:
    if not allocations:
        return []
    contract_ids = {a.contract_id for a in allocations}
    contract_nodes: dict[int, set[int]] = {contract_id: set() for contract_id in contract_ids}
    for contract_id, node_id in Allocation.objects.filter(contract_id__in=contract_ids).values_list(
        "contract_id", "node_id"
    ):
        contract_nodes[contract_id].add(node_id)

    moves: list[_Move] = []
    left: dict[int, list[Allocation]] = {}  # by the failed node's reservation
    staying: list[Allocation] = []  # resold hours no spare took: the failed node keeps them
    for allocation in allocations:  # 1. spares of the same listing (the deepest sales first)
        starts_at = max(from_hour, allocation.starts_at)
        if any(
            kept.depth == allocation.depth + 1 and kept.starts_at < allocation.ends_at and kept.ends_at > starts_at
            for kept in staying
        ):
            staying.append(allocation)  # its hours are sold on, on this node: it keeps the node
            continue
        spare = _spare(
            listing_id=allocation.listing_id,
            starts_at=starts_at,
            ends_at=allocation.ends_at,
            exclude=contract_nodes[allocation.contract_id],
        )
        if spare is None:
            if allocation.depth:
                staying.append(allocation)  # a resale takes no unlisted node: its seller holds none
            else:
                left.setdefault(allocation.listing_node_id, []).append(allocation)
            continue
        moves.append(_Move(allocation, starts_at, *spare))
        contract_nodes[allocation.contract_id].add(spare[1])

    for listing_node_id, remaining in left.items():  # 2. an unlisted node takes the reservation over
        binding = ListingNode.objects.get(pk=listing_node_id)
        starts_at = max(from_hour, binding.starts_at)
        ends_at = max(binding.ends_at, *(a.ends_at for a in remaining))
        in_contracts = Allocation.objects.filter(
            contract_id__in={a.contract_id for a in remaining}, node_id=OuterRef("pk")
        )
        free = (
            _free_nodes_qs(cluster_id=node.cluster_id, starts_at=starts_at, ends_at=ends_at)
            .exclude(listing_nodes__listing_id=binding.listing_id)
            .exclude(Exists(in_contracts))
            .first()
        )
        if free is None:
            continue  # 3. no replacement: the allocations stay; billing credits the lost hours
        ListingNode.objects.filter(pk=binding.pk).update(released=True)
        taken = ListingNode.objects.create(
            listing_id=binding.listing_id, node=free, starts_at=starts_at, ends_at=ends_at
        )
        for allocation in remaining:
            moves.append(_Move(allocation, max(from_hour, allocation.starts_at), taken.pk, free.pk))

    if not moves:
        return []
    Allocation.objects.filter(pk__in=[m.allocation.pk for m in moves]).update(
        ends_at=Greatest(F("starts_at"), from_hour)
    )
    Allocation.objects.bulk_create(
        Allocation(
            contract_id=m.allocation.contract_id,
            listing_node_id=m.listing_node_id,
            node_id=m.node_id,
            listing_id=m.allocation.listing_id,
            starts_at=m.starts_at,
            ends_at=m.allocation.ends_at,
            depth=m.allocation.depth,
        )
        for m in moves
    )
    replacements = Replacement.objects.bulk_create(
        Replacement(
            incident=incident,
            contract_id=m.allocation.contract_id,
            failed_node=node,
            replacement_node_id=m.node_id,
            from_hour=m.starts_at,
        )
        for m in moves
    )
    hostnames = dict(Node.objects.filter(pk__in={m.node_id for m in moves}).values_list("pk", "hostname"))
    notices = []
    for m in moves:
        contract = m.allocation.contract
        data = contract_data(contract) | {
            "replacement": {
                "incident_id": incident.pk,
                "failed_node": node.hostname,
                "replacement_node": hostnames[m.node_id],
                "from_hour": m.starts_at,
            }
        }
        for org_id in sorted({contract.lab_id, contract.provider_id}):
            notices.append(
                Notice(
                    org_id,
                    EventType.CONTRACT_NODE_REPLACED,
                    data,
                    dedupe_key=f"contract.node_replaced:{incident.pk}:{contract.pk}:{org_id}",
                )
            )
    events_publish(notices)
    return replacements
