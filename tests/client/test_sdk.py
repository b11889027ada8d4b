"""The client's own rules, against a scripted transport (no server): one Idempotency-Key for every
attempt of a call, retries on connection errors, 429 (after its Retry-After) and 5xx, typed
errors, lists that follow pages, and where the key and URL come from."""

import asyncio
import json
import stat
from decimal import Decimal

import httpx
import pytest
from gpubroker import (
    AllRejected,
    AsyncClient,
    CapacityUnavailable,
    Client,
    ConfigurationError,
    Conflict,
    CreditLimitExceeded,
    NotFound,
    RateLimited,
    Retry,
    ServerError,
    TransportError,
)
from gpubroker import models as m
from gpubroker.config import config_path, read_config, write_config

KEY = "gpb_test_key"
REQUEST = {"gpu_model": "h100-sxm-80gb", "gpu_count": 8, "starts_at": "2026-12-01T10:00:00Z", "duration_hours": 4,
           "max_price_per_gpu_hour": "2.50", "billing_mode": "metered"}  # fmt: skip
URL = "http://api.test"


def error(status: int, code: str, message: str = "No.", fields: dict | None = None, **headers) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "fields": fields or {}}}
    return httpx.Response(status, json=body, headers=headers)


def compute_request(**changes) -> dict:
    return {"id": 7, "gpu_model": "h100-sxm-80gb", "gpu_count": 8, "starts_at": "2026-12-01T10:00:00Z",
            "duration_hours": 4, "ends_at": "2026-12-01T14:00:00Z", "max_price_per_gpu_hour": "2.5000",
            "billing_mode": "metered", "contracts": [], "created_at": "2026-11-30T10:00:00Z", **changes}  # fmt: skip


class Script:
    """Answers requests in turn, keeping each request it saw."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(script: Script, **kwargs) -> tuple[Client, list[float]]:
    gpb = Client(KEY, URL, http_client=httpx.Client(transport=httpx.MockTransport(script)), **kwargs)
    slept: list[float] = []
    gpb.sleep = slept.append
    return gpb, slept


def create_request(gpb) -> m.ComputeRequest:
    return gpb.compute_requests.create(**REQUEST)


def test_a_post_is_retried_under_one_idempotency_key_after_a_lost_connection_a_503_and_a_429():
    script = Script(
        httpx.ConnectError("refused"),
        error(503, "unavailable"),
        error(429, "throttled", **{"Retry-After": "7"}),
        httpx.Response(201, json=compute_request()),
    )
    gpb, slept = client(script)
    created = create_request(gpb)
    assert isinstance(created, m.ComputeRequest) and created.max_price_per_gpu_hour == Decimal("2.5")
    keys = {request.headers["Idempotency-Key"] for request in script.requests}
    assert len(script.requests) == 4 and len(keys) == 1
    assert slept[2] == 7  # the Retry-After, not the backoff
    assert 0 < slept[0] < slept[1] < 7  # backoff grows
    assert json.loads(script.requests[0].content) == REQUEST
    assert script.requests[0].headers["Authorization"] == f"Bearer {KEY}"


def test_each_post_has_its_own_key_and_a_get_has_none():
    script = Script(httpx.Response(201, json=compute_request()), httpx.Response(201, json=compute_request()),
                    httpx.Response(200, json=compute_request()))  # fmt: skip
    gpb, _ = client(script)
    create_request(gpb), create_request(gpb), gpb.compute_requests.get(7)
    first, second, read = script.requests
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
    assert "Idempotency-Key" not in read.headers


def test_retries_end_with_the_last_error():
    gpb, slept = client(Script(*[error(502, "bad_gateway")] * 3), retry=Retry(attempts=3))
    with pytest.raises(ServerError) as raised:
        gpb.compute_requests.get(7)
    assert (raised.value.status, len(slept)) == (502, 2)

    gpb, _ = client(Script(*[httpx.ReadTimeout("slow")] * 2), retry=Retry(attempts=2))
    with pytest.raises(TransportError):
        gpb.compute_requests.get(7)

    # A Retry-After longer than the client waits is an error at once.
    gpb, slept = client(Script(error(429, "throttled", **{"Retry-After": "3600"})))
    with pytest.raises(RateLimited) as raised:
        gpb.compute_requests.get(7)
    assert (raised.value.retry_after, slept) == (3600, [])


def test_a_4xx_is_never_retried_and_each_error_is_its_class_with_code_message_and_fields():
    cases = [
        (error(409, "capacity_unavailable", "Only 8 GPUs.", {"gpu_count": ["At most 8."]}), CapacityUnavailable),
        (error(409, "credit_limit_exceeded", "Over.", {"limit": "10.00"}), CreditLimitExceeded),
        (error(409, "invalid_transition", "Filled."), Conflict),
        (error(404, "not_found", "No such request."), NotFound),
        (error(422, "all_rejected", "Nothing stored.", {"rejected": []}), AllRejected),
    ]
    for response, cls in cases:
        script = Script(response)
        gpb, slept = client(script)
        with pytest.raises(cls) as raised:
            gpb.compute_requests.cancel(7)
        assert type(raised.value) is cls
        assert (len(script.requests), slept) == (1, [])
        body = json.loads(response.content)["error"]
        assert (raised.value.code, raised.value.message, raised.value.fields) == (
            body["code"], body["message"], body["fields"],
        )  # fmt: skip
    assert not issubclass(CapacityUnavailable, CreditLimitExceeded)
    assert not issubclass(CreditLimitExceeded, CapacityUnavailable)


def test_a_list_follows_next_until_the_last_page():
    page = {"count": 3, "previous": None}
    script = Script(
        httpx.Response(200, json=page | {"next": f"{URL}/api/v1/compute-requests?page=2",
                                         "results": [compute_request(id=1), compute_request(id=2)]}),
        httpx.Response(200, json=page | {"next": None, "results": [compute_request(id=3)]}),
    )  # fmt: skip
    gpb, _ = client(script)
    assert [item.id for item in gpb.compute_requests.list(status="open")] == [1, 2, 3]
    assert [str(request.url) for request in script.requests] == [
        f"{URL}/api/v1/compute-requests?status=open",
        f"{URL}/api/v1/compute-requests?page=2",
    ]


def test_the_async_client_is_the_same_awaited():
    script = Script(
        httpx.Response(503),
        httpx.Response(201, json=compute_request()),
        httpx.Response(200, json={"next": None, "previous": None, "results": [compute_request(id=9)]}),
    )

    async def run():
        gpb = AsyncClient(KEY, URL, http_client=httpx.AsyncClient(transport=httpx.MockTransport(script)))
        slept = []

        async def sleep(seconds):
            slept.append(seconds)

        gpb.sleep = sleep
        async with gpb:
            created = await create_request(gpb)
            listed = [item.id async for item in gpb.compute_requests.list()]
        return created, listed, slept

    created, listed, slept = asyncio.run(run())
    assert (created.id, listed, len(slept)) == (7, [9], 1)
    first, retried, _ = script.requests
    assert first.headers["Idempotency-Key"] == retried.headers["Idempotency-Key"]


def test_a_request_body_is_checked_before_it_is_sent():
    script = Script()
    gpb, _ = client(script)
    with pytest.raises(ValueError, match="gpu_count"):
        gpb.compute_requests.create(**REQUEST | {"gpu_count": "many"})
    assert script.requests == []


def test_the_key_and_url_come_from_arguments_then_the_environment_then_the_config_file(config_home, monkeypatch):
    with pytest.raises(ConfigurationError, match="no API key"):
        Client()
    path = write_config({"api_key": "gpb_from_file", "url": "https://file.example"})
    assert path == config_home / ".config" / "gpubroker" / "config.toml" == config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_config() == {"api_key": "gpb_from_file", "url": "https://file.example"}
    assert (Client().api_key, Client().base_url) == ("gpb_from_file", "https://file.example")
    monkeypatch.setenv("GPUBROKER_API_KEY", "gpb_from_env")
    monkeypatch.setenv("GPUBROKER_URL", "https://env.example/")
    assert (Client().api_key, Client().base_url) == ("gpb_from_env", "https://env.example")
    assert (Client("gpb_arg", "http://arg.example").api_key, Client("gpb_arg").base_url) == (
        "gpb_arg", "https://env.example",
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="http"):
        Client("gpb_arg", "ftp://nowhere")


def test_gpb_login_stores_the_key_readable_by_its_owner_only(config_home):
    from click.testing import CliRunner
    from gpubroker.cli import State, cli

    path = config_home / ".config" / "gpubroker" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('api_key = "old"\n')
    path.chmod(0o644)
    result = CliRunner().invoke(cli, ["login", "--url", "https://api.example", "--no-check"], input="gpb_secret\n",
                                obj=State(None, None, False))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_config() == {"api_key": "gpb_secret", "url": "https://api.example"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "gpb_secret" not in result.output  # asked with the input hidden
    shown = CliRunner().invoke(cli, ["--json", "config", "show"], obj=State(None, None, False))
    assert json.loads(shown.stdout)["api_key"] == "set"
