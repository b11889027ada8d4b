import pytest

from tests.billing.factories import COMMITTED, METERED, contract_create, make_provider, utc

# September 30th 10:00 UTC to October 1st 04:00 UTC: 14 hours in September, 4 in October.
SPANNING_START = utc(2026, 9, 30, 10)
SPANNING_HOURS = 18
METERED_START = utc(2026, 10, 5)
METERED_HOURS = 48
NODE_NAMES = ["gpu-m01", "gpu-m02"]


@pytest.fixture
def spanning_contract(provider_client, lab_client):
    """Committed, 1 node x 8 GPUs at 2.3500 over the September/October boundary."""
    return contract_create(
        lab=lab_client.organization,
        provider=provider_client.organization,
        starts_at=SPANNING_START,
        hours=SPANNING_HOURS,
        price="2.3500",
        mode=COMMITTED,
    )


@pytest.fixture
def metered_contract(provider_client, lab_client):
    """Metered, 2 nodes x 8 GPUs at 2.5000, October 5th 00:00 to 7th 00:00."""
    return contract_create(
        lab=lab_client.organization,
        provider=provider_client.organization,
        starts_at=METERED_START,
        hours=METERED_HOURS,
        nodes=2,
        hostnames=NODE_NAMES,
        price="2.5000",
        mode=METERED,
    )


@pytest.fixture
def foreign_contract(lab_client):
    """A contract of another provider, sold to the same lab."""
    return contract_create(
        lab=lab_client.organization, provider=make_provider("Foreign Provider"), starts_at=METERED_START, hours=24
    )
