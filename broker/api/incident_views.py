"""Node incidents: providers report them, both parties read them."""

import django_filters
from django import forms
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from broker.api.incident_serializers import IncidentOpenSerializer, IncidentResolveSerializer, IncidentSerializer
from broker.incidents import incident_open, incident_resolve
from broker.models import Incident
from broker.selectors import incident_list
from core.schema import bad_request, documented_error
from marketplace.models import Node
from marketplace.permissions import IsOrganizationMember, IsProvider

_OPEN, _RESOLVED = "open", "resolved"


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": 2**62})
class _IdFilter(django_filters.Filter):
    field_class = forms.IntegerField


@extend_schema_field({"type": "string", "enum": [_OPEN, _RESOLVED]})
class _StateFilter(django_filters.ChoiceFilter):
    """open or resolved, documented inline (not as one more enum component named for "status")."""


class IncidentFilter(django_filters.FilterSet):
    status = _StateFilter(
        choices=[(_OPEN, "Open"), (_RESOLVED, "Resolved")],
        method="filter_status",
        help_text="open (not yet resolved) or resolved.",
    )
    kind = django_filters.ChoiceFilter(choices=Incident.Kind.choices, help_text="Only this kind.")
    # A plain id: another provider's cluster and one that does not exist filter to the same empty page.
    cluster = _IdFilter(field_name="cluster_id", min_value=1, max_value=2**62, help_text="Only this cluster's.")

    class Meta:
        model = Incident
        fields = ["status", "kind", "cluster"]

    def filter_status(self, queryset, name, value):
        return queryset.filter(resolved_at__isnull=value == _OPEN)


_NOT_FOUND = documented_error("Not found", not_found="no such node in your clusters")


class NodeIncidentView(APIView):
    permission_classes = [IsProvider]

    @extend_schema(
        request=IncidentOpenSerializer,
        responses={
            201: IncidentSerializer,
            200: IncidentSerializer,
            400: bad_request("`started_at` in the future (beyond 5 minutes of clock skew) or more than 7 days ago"),
            404: _NOT_FOUND,
        },
        summary="Report a node's failure or degradation",
        description="A provider, or its monitoring, reports an incident on any of its nodes, sold or not. A "
        "`failure` cordons the node (out of service: not listed, not sold) and replaces it in every contract "
        "holding it from the next whole hour, for the rest of each contract, where a node is free for that "
        "whole window: first a spare the same listing reserves, then an unlisted free node of the cluster; the "
        "contracts' node lists show which node served which hours. A `degraded` report is recorded only. 201 "
        "with the new incident; 200 with the open one when the node already has an open incident of that kind "
        "(a second report of the same outage).",
    )
    def post(self, request: Request, cluster_id: str, node_id: str) -> Response:
        organization = request.user.organization
        node = get_object_or_404(Node, pk=node_id, cluster_id=cluster_id, cluster__provider=organization)
        serializer = IncidentOpenSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        opened = incident_open(
            provider=organization, node=node, **serializer.validated_data, actor_label=request.user.audit_label
        )
        incident = incident_list(organization=organization).get(pk=opened.incident.pk)
        return Response(
            IncidentSerializer(incident).data, status=status.HTTP_201_CREATED if opened.created else status.HTTP_200_OK
        )


class IncidentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Incidents on nodes: a provider's own, and those on nodes that served a lab's contracts."""

    serializer_class = IncidentSerializer
    permission_classes = [IsOrganizationMember]
    filterset_class = IncidentFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return Incident.objects.none()
        return incident_list(organization=self.request.user.organization)

    @extend_schema(
        summary="List incidents",
        description="A provider's incidents on its nodes; for a lab, those on nodes that served (or serve) its "
        "contracts while the incident lasted, or that replaced a node of its contracts. Newest start first.",
    )
    def list(self, request: Request) -> Response:
        return super().list(request)

    @extend_schema(summary="Read an incident")
    def retrieve(self, request: Request, pk: str) -> Response:
        """One incident you may see, with the replacements made for your contracts."""
        return super().retrieve(request, pk=pk)

    @extend_schema(
        request=IncidentResolveSerializer,
        responses={
            200: IncidentSerializer,
            400: bad_request("`resolved_at` before the incident started, or in the future"),
            404: documented_error("Not found", not_found="no such incident of yours"),
        },
        summary="Resolve an incident",
        description="The node is serving again: a failed node returns to service (replacements already made "
        "stand). Resolving a resolved incident answers it unchanged.",
    )
    @action(detail=True, methods=["post"], permission_classes=[IsProvider], filter_backends=[])
    def resolve(self, request: Request, pk: str) -> Response:
        organization = request.user.organization
        incident = get_object_or_404(Incident, pk=pk, provider=organization)
        serializer = IncidentResolveSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        incident_resolve(
            provider=organization,
            incident=incident,
            resolved_at=serializer.validated_data.get("resolved_at"),
            actor_label=request.user.audit_label,
        )
        return Response(IncidentSerializer(self.get_queryset().get(pk=pk)).data)
