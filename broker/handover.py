"""Handover: the lab attaches SSH keys and a note to a contract, the provider reads them in the
contract's access manifest and reports access ready (delivered); and what each contract event
says of its contract.

A contract not delivered ``DELIVERY_GRACE_MINUTES`` after its start is marked late by the
lifecycle (``contracts_advance``); billing credits the late time from ``starts_at``,
``delivered_at`` and ``delivery_late_at``. A report after the mark still records
``delivered_at``: the credit stops there.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from broker.models import Allocation, Contract
from broker.selectors import contract_nodes
from core.errors import InvalidInput, InvalidTransition, NotAllowed
from core.timeutils import iso_utc
from events.models import EventType
from events.services import Notice, events_publish
from marketplace.models import Organization, SshKey

DELIVERY_EARLIEST_HOURS = 48  # a provider may report access ready this long before the start
MAX_ACCESS_KEYS = 100
MAX_ACCESS_NOTE = 2000
MAX_DELIVERY_ENDPOINT = 500
MAX_DELIVERY_DETAIL = 4000
MANIFEST_NODES = 100  # the manifest shows this many nodes; /contracts/{id}/nodes pages the rest
HANDOVER_STATUSES = (Contract.Status.SCHEDULED, Contract.Status.ACTIVE)

# --- What a contract event says --------------------------------------------------------------

# The columns of a contract an event's data is made of, in this order: the lifecycle's
# set-wise statements return them (RETURNING), and ``contract_data`` reads them.
CONTRACT_COLUMNS = (
    "id",
    "status",
    "request_id",
    "listing_id",
    "lab_id",
    "provider_id",
    "cluster_id",
    "gpu_count",
    "node_count",
    "billing_mode",
    "price_per_gpu_hour",
    "starts_at",
    "ends_at",
)


def contract_data(row: Contract | tuple | dict, **about) -> dict:
    """The snapshot of a contract an event carries (a model instance, or a row of
    ``CONTRACT_COLUMNS``), plus what the event is about."""
    if isinstance(row, Contract):
        values = {name: getattr(row, name) for name in CONTRACT_COLUMNS}
    elif isinstance(row, dict):
        values = {name: row[name] for name in CONTRACT_COLUMNS}
    else:
        values = dict(zip(CONTRACT_COLUMNS, row, strict=False))
    return {
        "object": "contract",
        **values,
        "price_per_gpu_hour": str(values["price_per_gpu_hour"]),
        "starts_at": iso_utc(values["starts_at"]),
        "ends_at": iso_utc(values["ends_at"]),
        **about,
    }


def contract_notices(type: str, contracts: Iterable[tuple[dict, int, int]], *, once: bool = True) -> list[Notice]:
    """One event of ``type`` to the lab and one to the provider of each contract, given as
    ``(data, lab_id, provider_id)``; with ``once``, keyed ``<type>:<contract>:<organization>``
    so that publishing it again publishes nothing."""
    type = getattr(type, "value", type)  # the database takes the text, not the enum member
    notices = []
    for data, lab_id, provider_id in contracts:
        for organization_id in dict.fromkeys((lab_id, provider_id)):  # one event to an org that is both
            key = f"{type}:{data['id']}:{organization_id}" if once else None
            notices.append(Notice(organization_id, type, data, key))
    return notices


# The columns of a compute request its events carry, in this order (``request_data``).
REQUEST_COLUMNS = (
    "id",
    "status",
    "lab_id",
    "gpu_model_id",
    "gpu_count",
    "starts_at",
    "ends_at",
    "duration_hours",
    "billing_mode",
    "max_price_per_gpu_hour",
    "colocated",
    "unfilled_reason",
)


def request_data(row: tuple | dict, **about) -> dict:
    """The snapshot of a compute request its events carry, from a row of ``REQUEST_COLUMNS``."""
    values = row if isinstance(row, dict) else dict(zip(REQUEST_COLUMNS, row, strict=True))
    return {
        "object": "compute_request",
        **values,
        "starts_at": iso_utc(values["starts_at"]),
        "ends_at": iso_utc(values["ends_at"]),
        "max_price_per_gpu_hour": str(values["max_price_per_gpu_hour"]),
        **about,
    }


# --- Attaching keys and a note ---------------------------------------------------------------


def contract_access_set(*, contract: Contract, lab: Organization, ssh_key_ids: list[int], note: str = "") -> Contract:
    """Attach these of the lab's SSH keys, and a note, to its contract (replacing what was
    attached). The contract keeps copies: deleting a key later does not change it."""
    ids = list(dict.fromkeys(ssh_key_ids))
    if len(ids) > MAX_ACCESS_KEYS:
        raise InvalidInput(
            f"Attach at most {MAX_ACCESS_KEYS} keys.", fields={"ssh_key_ids": [f"At most {MAX_ACCESS_KEYS}."]}
        )
    if len(note) > MAX_ACCESS_NOTE:
        raise InvalidInput(
            f"The note is at most {MAX_ACCESS_NOTE} characters.", fields={"note": [f"At most {MAX_ACCESS_NOTE}."]}
        )
    with transaction.atomic():
        contract = Contract.objects.select_for_update().get(pk=contract.pk)
        if contract.lab_id != lab.pk:
            raise NotAllowed("Only the lab that bought a contract attaches its keys; you sold this one.")
        if contract.status not in HANDOVER_STATUSES:
            raise InvalidTransition(
                f"Keys are attached to a scheduled or active contract; this one is {contract.status}."
            )
        keys = {key.pk: key for key in SshKey.objects.filter(organization=lab, pk__in=ids)}
        unknown = [key_id for key_id in ids if key_id not in keys]
        if unknown:
            raise InvalidInput(
                "Attach your own SSH keys: register them with POST /api/v1/ssh-keys.",
                fields={"ssh_key_ids": [f"No key of yours has id {', '.join(map(str, unknown))}."]},
            )
        contract.access_keys = [
            {
                "id": key.pk,
                "name": keys[key.pk].name,
                "fingerprint": keys[key.pk].fingerprint,
                "public_key": keys[key.pk].public_key,
            }
            for key in (keys[key_id] for key_id in ids)
        ]
        contract.access_note = note
        contract.save(update_fields=["access_keys", "access_note"])
    return contract


# --- The access manifest ---------------------------------------------------------------------


@dataclass(frozen=True)
class AccessManifest:
    contract: Contract
    node_count: int  # the contract's nodes, each for the hours it serves (a replacement is one more)
    nodes: list[Allocation]  # the first MANIFEST_NODES of them, by hostname (``contract_nodes``)


def contract_access(*, contract: Contract) -> AccessManifest:
    """What the provider needs to hand the contract over: its nodes and their hours, the
    lab's keys and note, and the delivery so far."""
    serving = contract_nodes(contract=contract)  # as GET /contracts/{id}/nodes lists them
    nodes = list(serving[:MANIFEST_NODES])
    count = len(nodes) if len(nodes) < MANIFEST_NODES else serving.count()
    return AccessManifest(contract=contract, node_count=count, nodes=nodes)


# --- Delivery --------------------------------------------------------------------------------

CONNECTION_DETAILS_ONLY = (
    "Send connection details only (an endpoint, a login host, a namespace, how to connect): never a password, "
    "a token or a private key. The lab's own SSH keys give it access."
)
# Names of secrets, as a field of the body or as `name: value` / `name=value` in its text.
SECRET_NAMES = ("password", "passwd", "passphrase", "secret", "token", "private_key", "api_key", "access_key")
_SECRET_TEXT = re.compile(
    r"-----BEGIN|PRIVATE KEY|\b(?:" + "|".join(SECRET_NAMES) + r")\b\s*[:=]"
    # user:password@ in a URL's authority
    r"|^[a-z][a-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@",
    re.IGNORECASE,
)


def looks_like_secret(text: str) -> bool:
    """Whether connection details carry what looks like a credential."""
    return bool(_SECRET_TEXT.search(text))


def secret_refusal(*fields: str) -> InvalidInput:
    return InvalidInput(
        CONNECTION_DETAILS_ONLY, fields={name: [CONNECTION_DETAILS_ONLY] for name in fields}, code="secret_refused"
    )


def contract_deliver(
    *, contract: Contract, provider: Organization, endpoint: str, detail: str = "", now: datetime | None = None
) -> Contract:
    """The provider reports access to the contract's nodes ready, with how to connect.

    From ``DELIVERY_EARLIEST_HOURS`` before the start until the end, on a scheduled or active
    contract. The first report's time is the delivery time (billing credits the time before
    it, past the grace); a later one updates the endpoint and detail only.
    """
    now = now or timezone.now()
    endpoint, detail = endpoint.strip(), detail.strip()
    if not endpoint:
        raise InvalidInput("Say where to connect.", fields={"endpoint": ["This field may not be blank."]})
    if not endpoint.isprintable() or any(character.isspace() for character in endpoint):
        message = "An endpoint is one URL or host:port, without spaces."
        raise InvalidInput(message, fields={"endpoint": [message]})
    secret = [name for name, text in (("endpoint", endpoint), ("detail", detail)) if looks_like_secret(text)]
    if secret:
        raise secret_refusal(*secret)
    with transaction.atomic():
        contract = Contract.objects.select_for_update().get(pk=contract.pk)
        if contract.provider_id != provider.pk:
            raise NotAllowed("Only the provider that sold a contract reports its delivery; you bought this one.")
        if contract.status not in HANDOVER_STATUSES:
            raise InvalidTransition(f"A {contract.status} contract is not delivered.")
        earliest = contract.starts_at - timedelta(hours=DELIVERY_EARLIEST_HOURS)
        if now < earliest:
            raise InvalidTransition(
                f"Delivery is reported from {DELIVERY_EARLIEST_HOURS} hours before the start "
                f"({earliest:%Y-%m-%dT%H:%MZ}).",
                code="delivery_too_early",
            )
        if now >= contract.ends_at:
            raise InvalidTransition("The contract has ended.")
        first = contract.delivered_at is None
        if not first and (contract.delivery_endpoint, contract.delivery_detail) == (endpoint, detail):
            return contract  # the same report again: nothing changes
        if first:
            contract.delivered_at = now
        contract.delivery_endpoint, contract.delivery_detail = endpoint, detail
        contract.save(update_fields=["delivered_at", "delivery_endpoint", "delivery_detail"])
        data = contract_data(contract, delivery=delivery_data(contract))
        # The first report once, whatever retries; a changed report again, with what changed.
        events_publish(
            contract_notices(EventType.CONTRACT_DELIVERED, [(data, contract.lab_id, contract.provider_id)], once=first)
        )
    return contract


def delivery_data(contract: Contract) -> dict:
    return {
        "endpoint": contract.delivery_endpoint,
        "detail": contract.delivery_detail,
        "delivered_at": iso_utc(contract.delivered_at),
        "late": contract.delivery_late_at is not None,
        "delivery_late_at": iso_utc(contract.delivery_late_at),
    }
