"""The admin's login: locked per username and address after repeated failures, passwords
held to Django's four validators, and an operator's session that does not last."""

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import get_default_password_validators, validate_password
from django.core.exceptions import ValidationError
from django.test import Client

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "a-long-operator-passphrase"
HERE = "192.0.2.10"
ELSEWHERE = "192.0.2.20"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def operators(db):
    users = get_user_model().objects
    return [users.create_superuser(name, f"{name}@ops.example", PASSWORD) for name in ("ops-dave", "ops-erin")]


def log_in(username: str, password: str, address: str):
    return Client(REMOTE_ADDR=address).post(LOGIN, {"username": username, "password": password})


def logged_in(response) -> bool:
    return response.status_code == 302 and response["Location"] == "/admin/"


def fail(times: int, username: str = "ops-dave", address: str = HERE) -> list[int]:
    return [log_in(username, "not-the-password", address).status_code for _ in range(times)]


class TestLockout:
    def test_after_the_limit_the_right_password_is_refused_from_that_address(self, operators):
        limit = django_settings.AXES_FAILURE_LIMIT
        assert fail(limit) == [200] * (limit - 1) + [429]
        response = log_in("ops-dave", PASSWORD, HERE)
        assert response.status_code == 429
        assert "too many login attempts" in response.content.decode()

    def test_the_same_user_from_another_address_still_logs_in(self, operators):
        fail(django_settings.AXES_FAILURE_LIMIT)
        assert logged_in(log_in("ops-dave", PASSWORD, ELSEWHERE))

    def test_another_user_from_the_same_address_still_logs_in(self, operators):
        fail(django_settings.AXES_FAILURE_LIMIT)
        assert logged_in(log_in("ops-erin", PASSWORD, HERE))

    def test_a_success_clears_the_count(self, operators):
        limit = django_settings.AXES_FAILURE_LIMIT
        fail(limit - 1)
        assert logged_in(log_in("ops-dave", PASSWORD, HERE))
        assert fail(limit - 1) == [200] * (limit - 1)
        assert logged_in(log_in("ops-dave", PASSWORD, HERE))

    def test_the_lock_holds_until_the_cool_off_ends(self, operators, time_machine):
        time_machine.move_to("2026-12-02T12:00:00Z", tick=False)
        fail(django_settings.AXES_FAILURE_LIMIT)
        time_machine.shift(django_settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
        assert log_in("ops-dave", PASSWORD, HERE).status_code == 429

    def test_the_lock_ends_after_the_cool_off(self, operators, time_machine):
        """(An attempt during the lock starts the cool-off again: none is made here.)"""
        time_machine.move_to("2026-12-02T12:00:00Z", tick=False)
        fail(django_settings.AXES_FAILURE_LIMIT)
        time_machine.shift(django_settings.AXES_COOLOFF_TIME + timedelta(seconds=1))
        assert logged_in(log_in("ops-dave", PASSWORD, HERE))

    def test_the_login_page_still_renders(self, db):
        response = Client().get(LOGIN)
        assert response.status_code == 200
        assert 'id="login-form"' in response.content.decode()


class TestPasswords:
    def test_the_four_standard_validators_are_on(self):
        names = [type(validator).__name__ for validator in get_default_password_validators()]
        assert names == [
            "UserAttributeSimilarityValidator",
            "MinimumLengthValidator",
            "CommonPasswordValidator",
            "NumericPasswordValidator",
        ]

    @pytest.mark.parametrize(
        "password,code",
        [
            ("ops-dave-2026", "password_too_similar"),
            ("k9#Lp2", "password_too_short"),
            ("password1234", "password_too_common"),
            ("80731946205813", "password_entirely_numeric"),
        ],
    )
    def test_each_kind_of_weak_password_is_refused(self, password, code):
        user = get_user_model()(username="ops-dave", email="dave@ops.example")
        with pytest.raises(ValidationError) as refused:
            validate_password(password, user)
        assert code in {error.code for error in refused.value.error_list}

    def test_a_long_unusual_passphrase_passes(self):
        validate_password(PASSWORD, get_user_model()(username="ops-dave"))


class TestSession:
    def test_an_operators_session_ends_after_a_few_hours(self, operators, time_machine):
        time_machine.move_to("2026-12-02T08:00:00Z", tick=False)
        client = Client()
        client.force_login(operators[0])
        assert client.get("/admin/").status_code == 200
        time_machine.shift(timedelta(seconds=django_settings.SESSION_COOKIE_AGE + 1))
        response = client.get("/admin/")
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")

    def test_the_session_cookie_ends_with_the_browser(self, operators):
        response = log_in("ops-dave", PASSWORD, HERE)
        cookie = response.cookies[django_settings.SESSION_COOKIE_NAME]
        assert cookie["max-age"] == "" and cookie["expires"] == ""
