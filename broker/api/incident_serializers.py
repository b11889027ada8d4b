"""Serializers of node incidents and the replacements they caused."""

from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from broker.models import Incident, Replacement
from core.serializers import StrictCharField, StrictSerializer, time_field


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "A node down",
            value={"kind": "failure", "started_at": "2030-01-08T03:12:00Z", "detail": "GPU 3 fell off the bus"},
            request_only=True,
        )
    ]
)
class IncidentOpenSerializer(StrictSerializer):
    kind = serializers.ChoiceField(
        choices=Incident.Kind.choices,
        help_text="failure: the node cannot serve (it is cordoned and replaced in its contracts from the next "
        "whole hour); degraded: it serves with reduced performance (recorded only).",
    )
    started_at = time_field(
        help_text="When the node stopped serving (or degraded): not in the future (5 minutes of clock skew "
        "allowed), not more than 7 days ago."
    )
    detail = StrictCharField(
        max_length=2000, required=False, allow_blank=True, default="", help_text="What happened, for the record."
    )


@extend_schema_serializer(
    examples=[OpenApiExample("Fixed", value={"resolved_at": "2030-01-08T05:40:00Z"}, request_only=True)]
)
class IncidentResolveSerializer(StrictSerializer):
    resolved_at = time_field(
        required=False,
        help_text="When the node was serving again: not before started_at, not in the future. Now when omitted.",
    )


class ReplacementSerializer(serializers.ModelSerializer):
    contract_id = serializers.IntegerField(read_only=True, help_text="The contract whose node was replaced.")
    failed_node = serializers.CharField(
        source="failed_node.hostname", read_only=True, help_text="The hostname of the node that failed."
    )
    replacement_node = serializers.CharField(
        source="replacement_node.hostname", read_only=True, help_text="The hostname of the node serving instead."
    )

    class Meta:
        model = Replacement
        fields = ["contract_id", "failed_node", "replacement_node", "from_hour", "created_at"]
        extra_kwargs = {
            "from_hour": {"help_text": "The first hour the replacement serves the contract."},
            "created_at": {"help_text": "When the replacement was made."},
        }


class IncidentSerializer(serializers.ModelSerializer):
    cluster_id = serializers.IntegerField(read_only=True, help_text="The node's cluster.")
    node_id = serializers.IntegerField(read_only=True, help_text="The node's id.")
    hostname = serializers.CharField(source="node.hostname", read_only=True, help_text="The node's hostname.")
    is_open = serializers.SerializerMethodField(help_text="Not yet resolved.")
    replacements = serializers.SerializerMethodField(
        help_text="Replacement nodes given to contracts because of it: a provider sees all of its contracts', "
        "a lab those of its own contracts."
    )

    class Meta:
        model = Incident
        fields = [
            "id",
            "kind",
            "cluster_id",
            "node_id",
            "hostname",
            "started_at",
            "resolved_at",
            "is_open",
            "detail",
            "replacements",
            "created_at",
        ]
        extra_kwargs = {
            "id": {"help_text": "The incident's id."},
            "kind": {"help_text": "failure (cordoned and replaced) or degraded (recorded only)."},
            "started_at": {"help_text": "When the node stopped serving (or degraded), as reported."},
            "resolved_at": {"help_text": "When it was resolved; null while open."},
            "detail": {"help_text": "What happened, as reported."},
            "created_at": {"help_text": "When it was reported."},
        }

    def get_is_open(self, incident: Incident) -> bool:
        return incident.resolved_at is None

    @extend_schema_field(ReplacementSerializer(many=True))
    def get_replacements(self, incident: Incident) -> list[dict]:
        return ReplacementSerializer(incident.replacements.all(), many=True).data
