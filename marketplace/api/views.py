from django.shortcuts import get_object_or_404
from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.credit import exposure_as_read
from marketplace.api.serializers import (
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    GpuModelSerializer,
    IssuedApiKeySerializer,
    OrganizationSerializer,
)
from marketplace.models import ApiKey, GpuModel
from marketplace.selectors import api_key_list
from marketplace.services import api_key_create, api_key_revoke


class OrganizationView(APIView):
    @extend_schema(responses=OrganizationSerializer, summary="The calling organization, with its credit")
    def get(self, request: Request) -> Response:
        """The organization whose API key calls: its roles, status, credit limit and exposure."""
        organization = request.user.organization  # read with its key, this request
        exposure = exposure_as_read(organization)
        return Response(OrganizationSerializer(organization, context={"exposure": exposure}).data)


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Your organization's API keys. A key's secret is shown once, when it is created."""

    serializer_class = ApiKeySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return ApiKey.objects.none()
        return api_key_list(organization=self.request.user.organization)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: IssuedApiKeySerializer},
        summary="Create an API key",
        description="201 with the new key and its `secret`, shown this once and stored nowhere "
        "(`Cache-Control: no-store`). Needs a full key.",
    )
    def create(self, request: Request) -> Response:
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = api_key_create(
            organization=request.user.organization,
            name=serializer.validated_data["name"],
            scope=serializer.validated_data["scope"],
            actor_label=request.user.audit_label,
        )
        data = IssuedApiKeySerializer(issued.api_key).data | {"secret": issued.secret}
        response = Response(data, status=status.HTTP_201_CREATED)
        add_never_cache_headers(response)  # no-store: the secret is kept nowhere, not even for a replay
        return response

    @extend_schema(request=None, responses=ApiKeySerializer, summary="Revoke an API key")
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """Revoke one of your keys for good: it stops working at once. Revoking a revoked key changes nothing."""
        api_key = get_object_or_404(self.get_queryset(), pk=pk)
        return Response(ApiKeySerializer(api_key_revoke(api_key=api_key, actor_label=request.user.audit_label)).data)


class GpuModelViewSet(viewsets.ReadOnlyModelViewSet):
    """The GPU catalog: public, so a lab can learn the slugs before it has a key."""

    serializer_class = GpuModelSerializer
    queryset = GpuModel.objects.all()
    lookup_field = "slug"
    permission_classes = [AllowAny]
    authentication_classes = []
