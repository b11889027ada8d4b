import pytest
import time_machine

from tests.marketplace.factories import NOW


@pytest.fixture(autouse=True)
def frozen_time(db):
    """Every marketplace test runs at ``NOW``; ``frozen_time.move_to(...)`` moves the clock."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller
