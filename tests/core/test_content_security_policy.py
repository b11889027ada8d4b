"""The content security policy: every page carries it, and the pages a person opens (the
admin, the API docs) run under it in a real browser without one refused script or style."""

import re

import pytest
from django.contrib.auth import get_user_model

from tests.conftest import CHROMEDRIVER, CHROMIUM, WAIT_SECONDS

TITLE = "GPU Compute Brokerage API"
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)


def policy(response) -> dict[str, list[str]]:
    directives = [part.strip().split() for part in response["Content-Security-Policy"].split(";")]
    return {name: values for name, *values in directives if name}


@pytest.mark.parametrize("path", ["/admin/login/", "/api/v1/docs/", "/api/v1/redoc/", "/api/v1/gpu-models"])
def test_every_page_carries_the_policy(client, db, path):
    response = client.get(path)
    assert response.status_code == 200
    directives = policy(response)
    assert directives["script-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/admin/login/", "/api/v1/docs/", "/api/v1/redoc/"])
def test_pages_load_scripts_only_from_files_of_this_site(client, path):
    html = client.get(path).content.decode()
    assert INLINE_SCRIPT.findall(html) == []
    sources = re.findall(r'<script[^>]*\bsrc="([^"]+)"', html)
    assert sources and all(source.startswith("/") and not source.startswith("//") for source in sources)


def test_the_swagger_ui_start_up_script_is_a_javascript_file(client):
    html = client.get("/api/v1/docs/").content.decode()
    script = next(src for src in re.findall(r'<script[^>]*\bsrc="([^"]+)"', html) if "script" in src)
    response = client.get(script.replace("&amp;", "&"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in response.content.decode()


# --- in a real browser -----------------------------------------------------------------

browser_only = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver on PATH (Debian packages chromium and chromium-driver)",
)

# Runs before any script of the page, outside its policy, and records what the policy refused.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.effectiveDirective} refused ${event.blockedURI || "inline"}`);
});
"""


@pytest.fixture
def watched_browser(request):
    driver = request.getfixturevalue("browser")
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_VIOLATIONS})
    return driver


def violations(driver) -> list[str]:
    return driver.execute_script("return window.__cspViolations;")


def assert_nothing_refused(driver) -> None:
    refused = violations(driver)
    assert refused == [], "\n".join(refused)


@browser_only
@pytest.mark.parametrize(
    "path,rendered,expected_refusals",
    [
        ("/api/v1/docs/", ".swagger-ui .info .title", []),
        # Redoc shows the Redocly logo from their site, and hides it when it does not load.
        ("/api/v1/redoc/", "redoc h1", ["img-src refused https://cdn.redoc.ly/redoc/logo-mini.svg"]),
    ],
    ids=["swagger-ui", "redoc"],
)
def test_the_api_docs_render_under_the_policy(live_server, watched_browser, path, rendered, expected_refusals):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    watched_browser.get(f"{live_server.url}{path}")
    WebDriverWait(watched_browser, WAIT_SECONDS).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, rendered), TITLE)
    )
    assert violations(watched_browser) == expected_refusals


@browser_only
def test_the_admin_runs_its_scripts_under_the_policy(live_server, watched_browser, transactional_db):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    get_user_model().objects.create_superuser("ops-carol", "carol@ops.example", "a-long-operator-passphrase")
    operator = get_user_model().objects.get(username="ops-carol")
    wait = WebDriverWait(watched_browser, WAIT_SECONDS)

    watched_browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    wait.until(ec.visibility_of_element_located((By.NAME, "username"))).send_keys("ops-carol")
    watched_browser.find_element(By.NAME, "password").send_keys("a-long-operator-passphrase")
    watched_browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "market-overview-link")))
    assert_nothing_refused(watched_browser)

    # A change form with date and time widgets: the admin's scripts add their shortcuts.
    watched_browser.get(f"{live_server.url}/admin/auth/user/{operator.pk}/change/")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".datetimeshortcuts")))
    assert_nothing_refused(watched_browser)

    # A changelist with actions: the script that counts the selection runs.
    watched_browser.get(f"{live_server.url}/admin/auth/user/")
    wait.until(ec.element_to_be_clickable((By.ID, "action-toggle"))).click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".action-counter"), "1 of 1 selected"))
    assert_nothing_refused(watched_browser)
