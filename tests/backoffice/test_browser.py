"""End to end in a real browser: an operator cancels a contract through the admin.

Debian's headless Chromium and its chromedriver, driven by selenium against pytest-django's
live server. Never Selenium Manager: it would download a browser. The clock is not frozen
(the live server runs in another thread), so the contract is written for the next hour.
"""

from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from broker.models import Contract
from core.models import AuditEvent
from core.timeutils import next_hour
from tests.backoffice import factories
from tests.backoffice.factories import change_url
from tests.conftest import CHROMEDRIVER, CHROMIUM, WAIT_SECONDS

SCREENSHOT = Path(settings.BASE_DIR) / "artifacts" / "admin_contract_cancel.png"
PASSWORD = "a-long-operator-passphrase"

pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Chromium and chromedriver on PATH (Debian packages chromium and chromium-driver)",
    ),
    # Transactional for the live server (the root conftest puts the GPU catalog back). Not
    # serialized_rollback: restoring the snapshot collides with the content types that an
    # earlier transactional test's flush already re-created.
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def contract() -> Contract:
    provider, _ = factories.organization("Colossus", "provider")
    lab, _ = factories.organization("Frontier", "lab")
    listing = factories.listing(cluster=factories.cluster(provider=provider), starts_at=next_hour(), hours=48)
    return factories.contract(lab=lab, listing=listing, starts_at=next_hour(), hours=24, nodes=2)


def test_an_operator_cancels_a_contract_in_the_browser(live_server, browser, contract):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    get_user_model().objects.create_superuser("ops-alice", "alice@ops.example", PASSWORD)
    wait = WebDriverWait(browser, WAIT_SECONDS)

    def click(locator):
        wait.until(ec.element_to_be_clickable(locator)).click()

    # Log in.
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    wait.until(ec.visibility_of_element_located((By.NAME, "username"))).send_keys("ops-alice")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    click((By.CSS_SELECTOR, "#login-form [type=submit]"))
    wait.until(ec.presence_of_element_located((By.ID, "market-overview-link")))

    # The contract's page, then back to the list of contracts by the breadcrumbs.
    browser.get(f"{live_server.url}{change_url(contract)}")
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#content h2"), str(contract)))
    click((By.CSS_SELECTOR, f".breadcrumbs a[href$='{factories.changelist_url(Contract)}']"))
    wait.until(ec.presence_of_element_located((By.ID, "changelist")))

    # Select it, choose "cancel", Go.
    click((By.CSS_SELECTOR, f"input[name=_selected_action][value='{contract.pk}']"))
    Select(browser.find_element(By.NAME, "action")).select_by_value("cancel")
    click((By.CSS_SELECTOR, "#changelist-form button[name=index]"))

    # The action asks for a reason; confirm.
    reason = wait.until(ec.visibility_of_element_located((By.NAME, "reason")))
    assert str(contract) in browser.find_element(By.ID, "content-main").text
    reason.send_keys("Provider reported a failing InfiniBand switch")
    click((By.ID, "confirm-action"))

    success = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    contract.refresh_from_db()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))

    assert success.text == f"{contract}: cancelled; nodes free from {contract.released_at:%Y-%m-%d %H:%M} UTC."
    assert contract.status == Contract.Status.CANCELLED
    assert contract.cancel_reason == "Provider reported a failing InfiniBand switch"
    assert contract.released_at == contract.starts_at  # cancelled before it began: nothing was used
    event = AuditEvent.objects.get(action="contract_cancelled")
    assert (event.actor.username, event.target_id) == ("ops-alice", str(contract.pk))
    assert SCREENSHOT.stat().st_size > 10_000
