"""A suspended lab buys nothing: its suspension cancels its open requests, and the matching
engine passes over any open request of a suspended lab (one created in a race with it)."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from broker.matching import segment_match
from broker.models import ComputeRequest, Contract
from broker.selectors import segments_with_open_requests
from core.models import AuditEvent
from marketplace.models import Organization
from marketplace.services import organization_set_status
from tests.backoffice.factories import done, run_action
from tests.broker.factories import make_lab, request_create
from tests.marketplace.factories import NOW, ListingFactory, gpu_model, hour

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen")]


def statuses(*requests: ComputeRequest) -> list[tuple[str, object]]:
    return [ComputeRequest.objects.values_list("status", "closed_at").get(pk=r.pk) for r in requests]


def match():
    return segment_match(gpu_model_id=gpu_model().pk, wait=True)


class TestSuspensionCancels:
    def test_open_requests_of_the_lab_are_cancelled_and_audited(self):
        lab, other = make_lab(), make_lab()
        first = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        second = request_create(lab=lab, gpu_count=16, starts_at=hour(3), slug="a100-sxm-80gb")
        theirs = request_create(lab=other, gpu_count=8, starts_at=hour(2))

        organization_set_status(organization=lab, status=Organization.Status.SUSPENDED, actor_label="ops")

        assert statuses(first, second, theirs) == [("cancelled", NOW), ("cancelled", NOW), ("open", None)]
        event = AuditEvent.objects.get(action="compute_requests_cancelled")
        assert (event.target_type, event.target_id) == ("marketplace.organization", str(lab.pk))
        assert event.actor_label == "ops"
        assert event.message.startswith("2 open compute request(s) cancelled")

    def test_filled_and_closed_requests_are_left_alone(self):
        lab = make_lab()
        ListingFactory(node_count=1, starts_at=hour(1))
        filled = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        match()
        withdrawn = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        ComputeRequest.objects.filter(pk=withdrawn.pk).update(status="cancelled", closed_at=hour(-1))

        organization_set_status(organization=lab, status=Organization.Status.SUSPENDED)

        assert [s for s, _ in statuses(filled, withdrawn)] == ["filled", "cancelled"]
        assert statuses(withdrawn) == [("cancelled", hour(-1))]
        assert Contract.objects.filter(request=filled).count() == 1
        assert not AuditEvent.objects.filter(action="compute_requests_cancelled").exists()

    def test_suspending_again_or_verifying_cancels_nothing(self):
        lab = make_lab()
        organization_set_status(organization=lab, status=Organization.Status.VERIFIED)
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        assert statuses(request) == [("open", None)]
        organization_set_status(organization=lab, status=Organization.Status.SUSPENDED)
        organization_set_status(organization=lab, status=Organization.Status.SUSPENDED)
        assert AuditEvent.objects.filter(action="compute_requests_cancelled").count() == 1

    def test_the_admin_suspend_action_cancels_them(self):
        lab = make_lab()
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        operator = Client()
        operator.force_login(get_user_model().objects.create_superuser("ops-bob", "bob@ops.example", None))

        assert done(run_action(operator, Organization, "suspend", [lab]))

        assert statuses(request) == [("cancelled", NOW)]
        assert AuditEvent.objects.get(action="compute_requests_cancelled").actor.username == "ops-bob"


class TestEngineSkipsSuspendedLabs:
    """A request committed in a race with the suspension stays open and is never matched."""

    def suspend_without_cancelling(self, lab: Organization) -> None:
        Organization.objects.filter(pk=lab.pk).update(status=Organization.Status.SUSPENDED)

    def test_open_request_of_a_suspended_lab_is_not_matched(self):
        lab = make_lab()
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        self.suspend_without_cancelling(lab)
        ListingFactory(node_count=1, starts_at=hour(1))

        result = match()

        assert (result.requests_seen, result.requests_filled) == (0, 0)
        assert statuses(request) == [("open", None)]
        assert not Contract.objects.exists()

    def test_the_capacity_goes_to_the_next_lab_in_line(self):
        suspended, waiting = make_lab(), make_lab()
        older = request_create(lab=suspended, gpu_count=8, starts_at=hour(2))
        younger = request_create(lab=waiting, gpu_count=8, starts_at=hour(2))
        self.suspend_without_cancelling(suspended)
        ListingFactory(node_count=1, starts_at=hour(1))

        match()

        assert [s for s, _ in statuses(older, younger)] == ["open", "filled"]

    def test_the_sweep_passes_over_a_segment_only_suspended_labs_wait_in(self):
        lab = make_lab()
        request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        request_create(lab=make_lab(), gpu_count=8, starts_at=hour(2), slug="a100-sxm-80gb")
        self.suspend_without_cancelling(lab)
        assert segments_with_open_requests() == [gpu_model("a100-sxm-80gb").pk]

    def test_after_reactivation_a_request_from_the_race_is_matched(self):
        lab = make_lab()
        request = request_create(lab=lab, gpu_count=8, starts_at=hour(2))
        self.suspend_without_cancelling(lab)
        ListingFactory(node_count=1, starts_at=hour(1))
        match()
        organization_set_status(organization=lab, status=Organization.Status.ACTIVE)
        match()
        assert statuses(request)[0][0] == "filled"
