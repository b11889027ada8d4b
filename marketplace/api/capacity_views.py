from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from core.routers import ID_PATTERN
from core.schema import bad_request, conflict
from marketplace.api.capacity import (
    ClusterCreateSerializer,
    ClusterSerializer,
    ClusterUpdateSerializer,
    ListingCreateSerializer,
    ListingRowSerializer,
    ListingSearchSerializer,
    ListingSerializer,
    ListingUpdateSerializer,
    NodeAddSerializer,
    NodeSerializer,
    NodeUpdateSerializer,
)
from marketplace.models import Cluster, Listing, Node
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
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return Cluster.objects.none()
        return cluster_list(provider=self.request.user.organization)

    @extend_schema(summary="List your clusters")
    def list(self, request: Request) -> Response:
        """Your clusters, with how many nodes each has and how many are in service."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ClusterSerializer(page, many=True).data)

    @extend_schema(summary="Read a cluster")
    def retrieve(self, request: Request, pk: str) -> Response:
        """One of your clusters."""
        return Response(ClusterSerializer(self.get_object()).data)

    @extend_schema(
        request=ClusterCreateSerializer,
        responses={
            201: ClusterSerializer,
            400: bad_request("an unknown `gpu_model` (the message and `fields.gpu_model` list the catalog's slugs)"),
        },
        summary="Register a cluster",
        description="Register a cluster of identical nodes, all in service. Hostnames are generated unless given.",
    )
    def create(self, request: Request) -> Response:
        serializer = ClusterCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        cluster = cluster_create(provider=request.user.organization, **serializer.validated_data)
        return Response(ClusterSerializer(self.get_queryset().get(pk=cluster.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=ClusterUpdateSerializer,
        responses=ClusterSerializer,
        summary="Rename a cluster",
        description="Change a cluster's name; nothing else about a cluster changes once registered.",
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        cluster = self.get_object()
        serializer = ClusterUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        cluster_update(cluster=cluster, **serializer.validated_data)
        return Response(ClusterSerializer(self.get_queryset().get(pk=cluster.pk)).data)

    @extend_schema(
        methods=["get"],
        responses=NodeSerializer(many=True),
        summary="List a cluster's nodes",
        description="The cluster's nodes with their hostnames and status, in the order they were added.",
    )
    @extend_schema(
        methods=["post"],
        request=NodeAddSerializer,
        responses={201: ClusterSerializer},
        summary="Add nodes to a cluster",
        description="Add `count` nodes, in service; hostnames are generated unless given.",
    )
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

    @extend_schema(
        request=NodeUpdateSerializer,
        responses={
            200: NodeSerializer,
            409: conflict(
                node_in_use="the node is sold for a current or future hour, so it cannot go into maintenance",
                node_failed="the node is cordoned by an open failure incident; resolving the incident returns it "
                "to service (POST /api/v1/incidents/{id}/resolve)",
            ),
        },
        summary="Take a node out of service or put it back",
        description="A node in maintenance is neither listed nor sold; unsold listing reservations on it move "
        "to a free node of the cluster when there is one.",
    )
    @action(detail=True, methods=["patch"], url_path=rf"nodes/(?P<node_id>{ID_PATTERN})")
    def node(self, request: Request, pk: str, node_id: str) -> Response:
        cluster = self.get_object()
        node = get_object_or_404(Node, cluster=cluster, pk=node_id)
        serializer = NodeUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if "status" in serializer.validated_data:  # a PATCH with nothing to change changes nothing
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
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return Listing.objects.none()
        return listing_visible_to(organization=self.request.user.organization)

    def _own_listing(self, pk: str) -> Listing:
        return get_object_or_404(Listing, pk=pk, provider=self.request.user.organization)

    def _with_availability(self, listing: Listing) -> Listing:
        listing.available_nodes = listing_available_nodes(listing=listing)
        return listing

    @extend_schema(
        parameters=[ListingSearchSerializer],
        responses={
            200: ListingSerializer(many=True),
            400: bad_request(
                "an unknown `gpu_model` (the message and `fields.gpu_model` list the catalog's slugs); a search "
                "of capacity whose window has already begun or is over (`fields.starts_at` names the earliest "
                "start, `fields.ends_at` says it is past)"
            ),
        },
        summary="Search available capacity (labs) or list your own listings (providers)",
        description=(
            "Labs get active listings that can deliver `min_gpus` in whole nodes of one cluster for the whole "
            "window [starts_at, ends_at), after what is already sold, with `available_nodes` for that window; "
            "sorted by price, then start. A provider (or a lab with `mine=true`) gets its own listings in every "
            "status. A missing window bound means the rest of each listing's own window. A search of capacity "
            "for a window already begun or over is a 400 that says so, not an empty page: only hours not yet "
            "begun can be bought."
        ),
    )
    def list(self, request: Request) -> Response:
        params = ListingSearchSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        query = listing_query_for(organization=request.user.organization, **params.validated_data)

        def fetch(*, limit: int, offset: int):
            return ([], 0) if query is None else listing_search(query=query, limit=limit, offset=offset)

        rows, links = self.paginator.fetched_page(request, fetch)
        return Response({**links, "results": ListingRowSerializer(rows, many=True).data})

    @extend_schema(summary="Read a listing")
    def retrieve(self, request: Request, pk: str) -> Response:
        """A listing you may see (an active one, or your own), with `available_nodes` over its whole window."""
        listing = get_object_or_404(self.get_queryset(), pk=pk)
        return Response(ListingSerializer(self._with_availability(listing)).data)

    @extend_schema(
        request=ListingCreateSerializer,
        responses={201: ListingSerializer},
        summary="Offer capacity",
        description="Offer `node_count` nodes of one of your clusters for a window of whole UTC hours, at a price "
        "per GPU-hour. Specific free nodes are reserved for the listing at once; 400 when there are not enough.",
    )
    def create(self, request: Request) -> Response:
        serializer = ListingCreateSerializer(data=request.data, provider=request.user.organization)
        serializer.is_valid(raise_exception=True)
        listing = listing_create(provider=request.user.organization, **serializer.validated_data)
        listing = self.get_queryset().get(pk=listing.pk)
        return Response(ListingSerializer(self._with_availability(listing)).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=ListingUpdateSerializer,
        responses={
            200: ListingSerializer,
            409: conflict(invalid_transition="the listing is withdrawn, or cannot move to that status"),
        },
        summary="Reprice, pause or resume a listing",
        description="Contracts already written keep their terms.",
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        listing = self._own_listing(pk)
        serializer = ListingUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        listing = listing_update(listing=listing, **serializer.validated_data, actor_label=request.user.audit_label)
        return Response(ListingSerializer(self._with_availability(self.get_queryset().get(pk=listing.pk))).data)

    @extend_schema(request=None, responses=ListingSerializer, summary="Withdraw a listing")
    @action(detail=True, methods=["post"])
    def withdraw(self, request: Request, pk: str) -> Response:
        """End a listing for good and release its unsold nodes; sold nodes stay sold. Withdrawing twice is harmless."""
        listing = listing_withdraw(listing=self._own_listing(pk), actor_label=request.user.audit_label)
        return Response(ListingSerializer(self._with_availability(self.get_queryset().get(pk=listing.pk))).data)
