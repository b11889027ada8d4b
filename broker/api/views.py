from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from broker.api.serializers import (
    BookingSerializer,
    ComputeRequestCreateSerializer,
    ComputeRequestSerializer,
    ContractDetailSerializer,
    ContractNodeSerializer,
    ContractNodesQuerySerializer,
    ContractSerializer,
)
from broker.booking import listing_book
from broker.models import ComputeRequest, Contract
from broker.selectors import compute_request_list, contract_detail_list, contract_list, contract_nodes
from broker.services import compute_request_cancel, compute_request_create, contract_terminate
from core.schema import bad_request, conflict, documented_error
from marketplace.permissions import IsLab
from marketplace.selectors import listing_for_booking


class ComputeRequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A lab's orders for compute; the matching engine fills them."""

    permission_classes = [IsLab]
    serializer_class = ComputeRequestSerializer
    filterset_fields = ["status", "billing_mode"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return ComputeRequest.objects.none()
        return compute_request_list(lab=self.request.user.organization)

    @extend_schema(
        request=ComputeRequestCreateSerializer,
        responses={
            201: ComputeRequestSerializer,
            400: bad_request("an unknown `gpu_model` (the message and `fields.gpu_model` list the catalog's slugs)"),
            409: conflict(
                credit_limit_exceeded="at its most the request would take your exposure past your credit limit "
                "(`fields` has `limit`, `exposure` and `amount`)"
            ),
        },
        summary="Request compute",
        description="201 with the open request; the matching engine fills it when it can. 409 "
        "`credit_limit_exceeded` when the request, at its most (all its GPU-hours at its maximum price), "
        "would take your exposure past your credit limit. An open request the engine leaves unfilled "
        "for your credit limit says so in `unfilled_reason`.",
    )
    def create(self, request: Request) -> Response:
        serializer = ComputeRequestCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        compute_request = compute_request_create(lab=request.user.organization, **serializer.validated_data)
        data = ComputeRequestSerializer(compute_request).data | {"status": compute_request.status, "contracts": []}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={
            200: ComputeRequestSerializer,
            409: conflict(invalid_transition="only an open request can be cancelled"),
        },
        summary="Cancel an open compute request",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel an open request; contracts it already has stand."""
        compute_request_cancel(request=self.get_object())
        return Response(ComputeRequestSerializer(self.get_queryset().get(pk=pk)).data)


class ContractViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Contracts the caller is a party to, as buyer or seller."""

    serializer_class = ContractSerializer
    filterset_fields = ["status", "billing_mode"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no caller
            return Contract.objects.none()
        if self.action == "retrieve":
            return contract_detail_list(organization=self.request.user.organization)
        return contract_list(organization=self.request.user.organization)

    def get_serializer_class(self):
        return ContractDetailSerializer if self.action == "retrieve" else ContractSerializer

    @extend_schema(
        summary="List your contracts",
        description="Contracts you bought or sold, newest first, without their nodes (a contract may have "
        "thousands): read one contract for its hostnames, or page through them with "
        "GET /api/v1/contracts/{id}/nodes.",
    )
    def list(self, request: Request) -> Response:
        return super().list(request)

    @extend_schema(summary="Read a contract, with its nodes")
    def retrieve(self, request: Request, pk: str) -> Response:
        """A contract you bought or sold, with the hostnames of all its nodes."""
        return super().retrieve(request, pk=pk)

    @extend_schema(
        parameters=[ContractNodesQuerySerializer],
        responses=ContractNodeSerializer(many=True),
        summary="List a contract's nodes",
        description="The contract's nodes by hostname, each with the hours it serves the contract, a page at a "
        "time; for the lab that bought it and the provider that sold it. A node that failed is replaced from "
        "the next whole hour (GET /api/v1/incidents): it is listed with the hours it served, and its "
        "replacement with the hours from then on and `replaces` naming it.",
    )
    @action(detail=True, methods=["get"], filter_backends=[])  # the contracts' filters are not the nodes'
    def nodes(self, request: Request, pk: str) -> Response:
        contract = self.get_object()
        params = ContractNodesQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        page = self.paginate_queryset(contract_nodes(contract=contract, **params.validated_data))
        return self.get_paginated_response(ContractNodeSerializer(page, many=True).data)

    @extend_schema(
        request=None,
        responses={
            200: ContractDetailSerializer,
            409: conflict(
                committed_contract="a committed contract is paid in full and cannot be terminated",
                invalid_transition="the contract is not live",
            ),
            403: documented_error(
                "Forbidden",
                permission_denied="you sold this contract (an organization with both roles): only the lab that "
                "bought it may terminate it",
            ),
        },
        summary="Terminate a metered contract early",
    )
    @action(detail=True, methods=["post"], permission_classes=[IsLab])
    def terminate(self, request: Request, pk: str) -> Response:
        """The buying lab ends a metered contract: its nodes are free from the next whole hour."""
        contract_terminate(contract=self.get_object(), lab=request.user.organization)
        contract = contract_detail_list(organization=request.user.organization).get(pk=pk)
        return Response(ContractDetailSerializer(contract).data)


class ListingBookView(APIView):
    permission_classes = [IsLab]

    @extend_schema(
        request=BookingSerializer,
        responses={
            201: ContractDetailSerializer,
            409: conflict(
                capacity_unavailable="the capacity is no longer there, or the listing is not on offer",
                credit_limit_exceeded="the contract would take your exposure past your credit limit",
            ),
        },
        summary="Book a listing's capacity now, at its price",
        description="201 with the contract; 409 `capacity_unavailable` when the capacity is no longer there, "
        "or `credit_limit_exceeded` when the contract would take your exposure past your credit limit "
        "(`fields` has `limit`, `exposure` and `amount`; see GET /api/v1/organization).",
    )
    def post(self, request: Request, pk: int) -> Response:
        organization = request.user.organization
        listing = listing_for_booking(lab=organization, pk=pk)
        if listing is None:
            raise NotFound()  # as get_object_or_404's Http404 is answered: "Not found."
        serializer = BookingSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        contract = listing_book(lab=organization, listing=listing, **serializer.validated_data)
        # The booking statement returned all the answer shows: nothing is read back.
        return Response(ContractDetailSerializer(contract).data, status=status.HTTP_201_CREATED)
