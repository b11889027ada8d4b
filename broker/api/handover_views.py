"""Handover over HTTP: a contract's access manifest (read by both parties, set by the lab) and
the provider's delivery report."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from broker.api.serializers import ContractNodeSerializer
from broker.handover import (
    DELIVERY_EARLIEST_HOURS,
    MANIFEST_NODES,
    MAX_ACCESS_KEYS,
    MAX_ACCESS_NOTE,
    MAX_DELIVERY_DETAIL,
    MAX_DELIVERY_ENDPOINT,
    SECRET_NAMES,
    AccessManifest,
    contract_access,
    contract_access_set,
    contract_deliver,
    delivery_data,
    secret_refusal,
)
from broker.models import Contract
from broker.selectors import contract_list
from core.schema import conflict, documented_error
from core.serializers import StrictCharField, StrictIntegerField, StrictSerializer


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Two keys and a Slurm account",
            value={"ssh_key_ids": [12, 15], "note": "Slurm account: lab-one-pretrain"},
            request_only=True,
        )
    ]
)
class AccessSetSerializer(StrictSerializer):
    ssh_key_ids = serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=10**18 - 1, help_text="The id of one of your SSH keys."),
        max_length=MAX_ACCESS_KEYS,
        allow_empty=True,
        help_text=f"Your SSH keys to attach (GET /api/v1/ssh-keys), at most {MAX_ACCESS_KEYS}: they replace the "
        "keys attached before. The contract keeps a copy of each: deleting a key later does not remove it here.",
    )
    note = StrictCharField(
        max_length=MAX_ACCESS_NOTE,
        allow_blank=True,
        required=False,
        default="",
        trim_whitespace=True,
        help_text="What else the provider needs to set you up, e.g. a Kubernetes namespace or a Slurm account. "
        "Never a secret.",
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "A login node",
            value={
                "endpoint": "ssh://login.memphis.example.net:22",
                "detail": "Log in as user lab-one with one of your keys; the nodes are reachable from the login node.",
            },
            request_only=True,
        )
    ]
)
class DeliveredSerializer(StrictSerializer):
    endpoint = StrictCharField(
        max_length=MAX_DELIVERY_ENDPOINT,
        help_text="Where the lab connects: an ssh:// or https:// URL, or host:port. Connection details only.",
    )
    detail = StrictCharField(
        max_length=MAX_DELIVERY_DETAIL,
        allow_blank=True,
        required=False,
        default="",
        help_text="How to connect (user name, bastion, namespace...). Never a password, token or private key.",
    )

    def to_internal_value(self, data):
        if isinstance(data, dict):
            secret = sorted(name for name in data if isinstance(name, str) and name.lower() in SECRET_NAMES)
            if secret:
                raise secret_refusal(*secret)
        return super().to_internal_value(data)


class AccessKeySerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The id the key had in the lab's keys when it was attached.")
    name = serializers.CharField(help_text="The key's name.")
    fingerprint = serializers.CharField(help_text="SHA256:<base64>, as `ssh-keygen -l` prints it.")
    public_key = serializers.CharField(help_text="The OpenSSH public key line, to install for the lab.")


class DeliverySerializer(serializers.Serializer):
    endpoint = serializers.CharField(help_text="Where the lab connects, as the provider reported it; empty before.")
    detail = serializers.CharField(help_text="How to connect, as the provider reported it.")
    delivered_at = serializers.DateTimeField(
        allow_null=True, help_text="When the provider first reported access ready; null until then."
    )
    late = serializers.BooleanField(
        help_text="Whether the contract was found undelivered DELIVERY_GRACE_MINUTES after its start (the time "
        "until delivery is credited)."
    )
    delivery_late_at = serializers.DateTimeField(
        allow_null=True, help_text="When it was found undelivered; null if it never was."
    )


class AccessManifestSerializer(serializers.Serializer):
    contract = serializers.IntegerField(help_text="The contract's id.")
    status = serializers.CharField(
        help_text="The contract's status: scheduled, active, completed, terminated or cancelled."
    )
    starts_at = serializers.DateTimeField(help_text="The contract's start.")
    ends_at = serializers.DateTimeField(help_text="The contract's end.")
    node_count = serializers.IntegerField(
        help_text="How many (node, hours) the contract has: a node replaced mid-contract counts with its "
        "replacement, each for its hours."
    )
    nodes = ContractNodeSerializer(
        many=True,
        help_text=f"The first {MANIFEST_NODES} by hostname, each with the hours it serves the contract; "
        "`nodes_url` pages them all.",
    )
    nodes_url = serializers.CharField(help_text="GET it for every node of the contract, a page at a time.")
    ssh_keys = AccessKeySerializer(many=True, help_text="The lab's public keys to install on the nodes.")
    note = serializers.CharField(help_text="The lab's note, e.g. a Kubernetes namespace or a Slurm account.")
    delivery = DeliverySerializer(help_text="The provider's report that access is ready.")


def _manifest(manifest: AccessManifest) -> dict:
    contract = manifest.contract
    return AccessManifestSerializer(
        {
            "contract": contract.pk,
            "status": contract.status,
            "starts_at": contract.starts_at,
            "ends_at": contract.ends_at,
            "node_count": manifest.node_count,
            "nodes": manifest.nodes,
            "nodes_url": f"/api/v1/contracts/{contract.pk}/nodes",
            "ssh_keys": contract.access_keys,
            "note": contract.access_note,
            "delivery": delivery_data(contract),
        }
    ).data


def _contract(request: Request, pk: str) -> Contract:
    """A contract the caller bought or sold; any other is a 404."""
    return get_object_or_404(contract_list(organization=request.user.organization), pk=pk)


class ContractAccessView(APIView):
    @extend_schema(
        responses=AccessManifestSerializer,
        summary="Read a contract's access manifest",
        description="What the provider needs to hand the contract over: its nodes and the hours each serves "
        f"(the first {MANIFEST_NODES}, and `nodes_url` for all), the lab's SSH public keys and note, and the "
        "delivery so far. For the lab that bought it and the provider that sold it.",
    )
    def get(self, request: Request, pk: str) -> Response:
        return Response(_manifest(contract_access(contract=_contract(request, pk))))

    @extend_schema(
        request=AccessSetSerializer,
        responses={
            200: AccessManifestSerializer,
            400: documented_error(
                "Bad request", invalid="an id in `ssh_key_ids` is not one of your SSH keys, or the note is too long"
            ),
            403: documented_error(
                "Forbidden",
                permission_denied="you sold this contract: only the lab that bought it attaches keys",
            ),
            409: conflict(invalid_transition="the contract is no longer scheduled or active"),
        },
        summary="Attach SSH keys and a note to a contract",
        description="The buying lab sets the SSH keys (by id, from GET /api/v1/ssh-keys) and the note its "
        "provider reads in the access manifest, replacing what was set; while the contract is scheduled or "
        "active. 200 with the manifest.",
    )
    def put(self, request: Request, pk: str) -> Response:
        contract = _contract(request, pk)
        serializer = AccessSetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        contract = contract_access_set(contract=contract, lab=request.user.organization, **serializer.validated_data)
        return Response(_manifest(contract_access(contract=contract)))


class ContractDeliveredView(APIView):
    @extend_schema(
        request=DeliveredSerializer,
        responses={
            200: AccessManifestSerializer,
            400: documented_error(
                "Bad request",
                secret_refused="the body looks like it carries a secret (a private key, a password, a token, "  # noqa: S106 (an error code)
                "credentials in the URL): send connection details only",
                invalid="a blank `endpoint`",
            ),
            403: documented_error(
                "Forbidden", permission_denied="you bought this contract: only the provider that sold it reports it"
            ),
            409: conflict(
                delivery_too_early=f"it is more than {DELIVERY_EARLIEST_HOURS} hours before the contract's start",
                invalid_transition="the contract has ended, or is no longer scheduled or active",
            ),
        },
        summary="Report a contract delivered",
        description="The selling provider says access to the contract's nodes is ready, and how to connect: "
        f"from {DELIVERY_EARLIEST_HOURS} hours before the start until the end. The first report's time is the "
        "delivery time (a contract undelivered DELIVERY_GRACE_MINUTES after its start is marked late, and the "
        "time until delivery is credited); a later report changes the endpoint and detail only. Publishes "
        "`contract.delivered` to both parties. 200 with the access manifest.",
    )
    def post(self, request: Request, pk: str) -> Response:
        contract = _contract(request, pk)
        serializer = DeliveredSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        contract = contract_deliver(contract=contract, provider=request.user.organization, **serializer.validated_data)
        return Response(_manifest(contract_access(contract=contract)))
