"""Sending a call: the Idempotency-Key, the retries, the error mapping and pagination, once for
the sync client and once for the async one (they differ only by ``await``)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter

from gpubroker import __version__
from gpubroker.config import resolve
from gpubroker.errors import ApiError, ConfigurationError, TransportError, error_class

# The calls sent with an Idempotency-Key: a retry of one that succeeded gets the first answer
# again (a DELETE's 204 too, rather than a 404), and never does the work twice.
KEYED = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class Call:
    """One operation: what to send and what the answer is."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: Any = None
    result: Any = None  # a model class (or any type pydantic reads) for the answer; None: no body
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Retry:
    """How often and how long to retry a call that failed on the way (a connection error, a 429 or
    a 5xx). Every mutating call carries an Idempotency-Key, so a retry never does the work twice."""

    attempts: int = 5  # tries in all, the first included
    backoff: float = 0.5  # seconds before the first retry, doubled each time (with jitter)
    max_backoff: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After is an error, not a wait

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1 for the first), or None to give up."""
        if attempt >= self.attempts:
            return None
        if response is not None:
            after = retry_after(response)
            if after is not None:
                return after if after <= self.max_retry_after else None
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # noqa: S311 (jitter, not a secret)


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def to_jsonable(body: Any) -> Any:
    if isinstance(body, BaseModel):
        return body.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return body


def api_error(response: httpx.Response) -> ApiError:
    try:
        detail = response.json()["error"]
        code, message, fields = str(detail["code"]), str(detail["message"]), detail.get("fields") or {}
    except (ValueError, KeyError, TypeError):
        code = "server_error" if response.status_code >= 500 else "http_error"
        message, fields = response.text[:500] or response.reason_phrase, {}
    cls = error_class(response.status_code, code)
    return cls(
        status=response.status_code,
        code=code,
        message=message,
        fields=fields if isinstance(fields, dict) else {"detail": fields},
        request_id=response.headers.get("X-Request-ID"),
        retry_after=retry_after(response),
    )


_adapters: dict[Any, TypeAdapter] = {}


def parse(result: Any, response: httpx.Response) -> Any:
    if result is None or response.status_code == 204 or not response.content:
        return None
    if result is dict:
        return response.json()
    adapter = _adapters.get(result)
    if adapter is None:
        adapter = _adapters[result] = TypeAdapter(result)
    return adapter.validate_json(response.content)


class _Base:
    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        retry: Retry | None = None,
        user_agent: str | None = None,
    ):
        settings = resolve(api_key, base_url)
        if not settings.api_key:
            raise ConfigurationError(
                "no API key: pass api_key, set GPUBROKER_API_KEY, or store one with `gpb login`"
            )
        self.api_key = settings.api_key
        self.base_url = settings.url
        self.retry = retry or Retry()
        self.timeout = timeout
        self.headers = {
            "Authorization": f"Bearer {settings.api_key}",
            "Accept": "application/json",
            "User-Agent": user_agent or f"gpubroker-python/{__version__}",
        }

    def _prepare(self, call: Call) -> tuple[str, dict[str, Any]]:
        url = call.path if call.path.startswith(("http://", "https://")) else API_PREFIX + call.path
        headers = dict(call.headers)
        if call.method in KEYED:
            # One key for every attempt of this call: the API replays the first answer to a retry.
            headers["Idempotency-Key"] = call.idempotency_key or str(uuid.uuid4())
        params = {key: stringify(value) for key, value in (call.params or {}).items() if value is not None}
        kwargs: dict[str, Any] = {"headers": headers}
        if params:  # httpx replaces a URL's query with params, even empty ones: a next page's URL keeps its own
            kwargs["params"] = params
        if isinstance(call.body, bytes):  # already JSON
            kwargs["content"] = call.body
            headers["Content-Type"] = "application/json"
        elif call.body is not None:
            kwargs["json"] = to_jsonable(call.body)
        return url, kwargs

    def _outcome(self, call: Call, response: httpx.Response) -> Any:
        if response.is_success:
            return parse(call.result, response)
        raise api_error(response)


def stringify(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        text = value.isoformat()
        return text.replace("+00:00", "Z")
    if hasattr(value, "value"):  # an enum member
        return str(value.value)
    return str(value)


class SyncTransport(_Base):
    """A blocking client over one httpx connection pool."""

    def __init__(self, *args: Any, http_client: httpx.Client | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.http = http_client or httpx.Client(timeout=self.timeout)
        self.http.base_url = self.base_url
        self.http.headers.update(self.headers)
        self.sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        url, kwargs = self._prepare(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.request(call.method, url, **kwargs)
            except httpx.TransportError as exc:
                wait = self.retry.delay(attempt, None)
                if wait is None:
                    raise TransportError(f"{call.method} {url}: {exc!r} (after {attempt} attempts)") from exc
                self.sleep(wait)
                continue
            if response.status_code in RETRY_STATUSES:
                wait = self.retry.delay(attempt, response)
                if wait is not None:
                    self.sleep(wait)
                    continue
            return response

    def run(self, call: Call) -> Any:
        return self._outcome(call, self._send(call))

    def pages(self, call: Call, item: Any) -> Iterator[Any]:
        """Every item of a list, page after page, following ``next``."""
        page_type = _page_type(item)
        while True:
            page = self.run(Call(call.method, call.path, call.params, result=page_type))
            yield from page.results
            if not page.next:
                return
            call = Call(call.method, page.next)


class AsyncTransport(_Base):
    """The same, on asyncio."""

    def __init__(self, *args: Any, http_client: httpx.AsyncClient | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.http = http_client or httpx.AsyncClient(timeout=self.timeout)
        self.http.base_url = self.base_url
        self.http.headers.update(self.headers)
        self.sleep: Callable[[float], Any] = asyncio.sleep

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _send(self, call: Call) -> httpx.Response:
        url, kwargs = self._prepare(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.http.request(call.method, url, **kwargs)
            except httpx.TransportError as exc:
                wait = self.retry.delay(attempt, None)
                if wait is None:
                    raise TransportError(f"{call.method} {url}: {exc!r} (after {attempt} attempts)") from exc
                await self.sleep(wait)
                continue
            if response.status_code in RETRY_STATUSES:
                wait = self.retry.delay(attempt, response)
                if wait is not None:
                    await self.sleep(wait)
                    continue
            return response

    async def run(self, call: Call) -> Any:
        return self._outcome(call, await self._send(call))

    async def pages(self, call: Call, item: Any) -> AsyncIterator[Any]:
        page_type = _page_type(item)
        while True:
            page = await self.run(Call(call.method, call.path, call.params, result=page_type))
            for result in page.results:
                yield result
            if not page.next:
                return
            call = Call(call.method, page.next)


_page_types: dict[Any, type[BaseModel]] = {}


def _page_type(item: Any) -> type[BaseModel]:
    """A page of ``item``: ``results`` and the URL of the ``next`` page (page numbers or a cursor)."""
    if item not in _page_types:
        from pydantic import create_model

        _page_types[item] = create_model(
            f"Page[{getattr(item, '__name__', item)}]",
            results=(list[item], ...),
            next=(str | None, None),
        )
    return _page_types[item]
