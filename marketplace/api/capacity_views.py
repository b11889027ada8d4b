from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from core.routers import ID_PATTERN
from marketplace.api.capacity import (
    ClusterCreateSerializer,
    ClusterSerializer,
    ClusterUpdateSerializer,
    ListingCreateSerializer,
    ListingSearchSerializer,
    ListingSerializer,
    ListingUpdateSerializer,
    NodeAddSerializer,
    NodeSerializer,
    NodeUpdateSerializer,
)
from marketplace.models import Listing, Node
from marketplace.permissions import IsOrganizationMember, IsProvider
from marketplace.selectors import (
    cluster_list,
    listing_available_nodes,
    listing_query_for,
    listing_search,
    listing_visible_to,
)
from marketplace.services import (
    cluster_add_nodes,
    cluster_create,
    cluster_update,
    listing_create,
    listing_update,
    listing_withdraw,
    node_set_status,
)


class ClusterViewSet(viewsets.GenericViewSet):
    """A provider's clusters and their nodes."""

    permission_classes = [IsProvider]
    serializer_class = ClusterSerializer

    def get_queryset(self):
        return cluster_list(provider=self.request.user.organization)

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ClusterSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ClusterSerializer(self.get_object()).data)

    @extend_schema(request=ClusterCreateSerializer, responses={201: ClusterSerializer})
    def create(self, request: Request) -> Response:
        serializer = ClusterCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        cluster = cluster_create(provider=request.user.organization, **serializer.validated_data)
        return Response(ClusterSerializer(self.get_queryset().get(pk=cluster.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ClusterUpdateSerializer, responses=ClusterSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        cluster = self.get_object()
        serializer = ClusterUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        cluster_update(cluster=cluster, **serializer.validated_data)
        return Response(ClusterSerializer(self.get_queryset().get(pk=cluster.pk)).data)

    @extend_schema(methods=["get"], responses=NodeSerializer(many=True))
    @extend_schema(methods=["post"], request=NodeAddSerializer, responses={201: ClusterSerializer})
    @action(detail=True, methods=["get", "post"])
    def nodes(self, request: Request, pk: str) -> Response:
        cluster = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(Node.objects.filter(cluster=cluster).order_by("id"))
            return self.get_paginated_response(NodeSerializer(page, many=True).data)
        serializer = NodeAddSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        cluster_add_nodes(cluster=cluster, **serializer.validated_data)
        return Response(ClusterSerializer(self.get_queryset().get(pk=cluster.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=NodeUpdateSerializer, responses=NodeSerializer)
    @action(detail=True, methods=["patch"], url_path=rf"nodes/(?P<node_id>{ID_PATTERN})")
    def node(self, request: Request, pk: str, node_id: str) -> Response:
        cluster = self.get_object()
        node = get_object_or_404(Node, cluster=cluster, pk=node_id)
        serializer = NodeUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        node = node_set_status(
            node=node, status=serializer.validated_data["status"], actor_label=request.user.audit_label
        )
        return Response(NodeSerializer(node).data)


class ListingViewSet(viewsets.GenericViewSet):
    """Providers offer capacity; labs search it."""

    serializer_class = ListingSerializer

    def get_permissions(self):
        if self.action in ("list", "retrieve"):
            return [IsOrganizationMember()]
        return [IsProvider()]

    def get_queryset(self):
        return listing_visible_to(organization=self.request.user.organization)

    def _own_listing(self, pk: str) -> Listing:
        return get_object_or_404(Listing, pk=pk, provider=self.request.user.organization)

    def _with_availability(self, listing: Listing) -> Listing:
        listing.available_nodes = listing_available_nodes(listing=listing)
        return listing

    @extend_schema(
        parameters=[ListingSearchSerializer],
        summary="Search available capacity (labs) or list your own listings (providers)",
        description=(
            "Labs get active listings that can deliver `min_gpus` in whole nodes of one cluster for the whole "
            "window [starts_at, ends_at), after what is already sold, with `available_nodes` for that window; "
            "sorted by price, then start. A provider (or a lab with `mine=true`) gets its own listings in every "
            "status. A missing window bound means the rest of each listing's own window."
        ),
    )
    def list(self, request: Request) -> Response:
        params = ListingSearchSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        query = listing_query_for(organization=request.user.organization, **params.validated_data)

        def fetch(*, limit: int, offset: int):
            return ([], 0) if query is None else listing_search(query=query, limit=limit, offset=offset)

        rows, links = self.paginator.fetched_page(request, fetch)
        return Response({**links, "results": ListingSerializer(rows, many=True).data})

    def retrieve(self, request: Request, pk: str) -> Response:
        listing = get_object_or_404(self.get_queryset(), pk=pk)
        return Response(ListingSerializer(self._with_availability(listing)).data)

    @extend_schema(request=ListingCreateSerializer, responses={201: ListingSerializer})
    def create(self, request: Request) -> Response:
        serializer = ListingCreateSerializer(data=request.data, provider=request.user.organization)
        serializer.is_valid(raise_exception=True)
        listing = listing_create(provider=request.user.organization, **serializer.validated_data)
        listing = self.get_queryset().get(pk=listing.pk)
        return Response(ListingSerializer(self._with_availability(listing)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ListingUpdateSerializer, responses=ListingSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        listing = self._own_listing(pk)
        serializer = ListingUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        listing = listing_update(listing=listing, **serializer.validated_data, actor_label=request.user.audit_label)
        return Response(ListingSerializer(self._with_availability(self.get_queryset().get(pk=listing.pk))).data)

    @extend_schema(request=None, responses=ListingSerializer)
    @action(detail=True, methods=["post"])
    def withdraw(self, request: Request, pk: str) -> Response:
        listing = listing_withdraw(listing=self._own_listing(pk), actor_label=request.user.audit_label)
        return Response(ListingSerializer(self._with_availability(self.get_queryset().get(pk=listing.pk))).data)
