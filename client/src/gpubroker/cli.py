"""The ``gpb`` command line: the API for labs and providers, as tables or ``--json``."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from pathlib import Path
from typing import Any

import click
import httpx
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gpubroker import __version__
from gpubroker import models as m
from gpubroker.client import Client
from gpubroker.config import config_path, read_config, resolve, write_config
from gpubroker.errors import (
    ApiError,
    AuthenticationFailed,
    ConfigurationError,
    Conflict,
    GpubrokerError,
    PermissionDenied,
    RateLimited,
    ServerError,
    TransportError,
)
from gpubroker.upload import BATCH, UploadSummary, file_format, upload
from gpubroker.webhooks import verify

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_NOT_FILLED = 6
EXIT_REJECTED = 7
EXIT_INTERRUPTED = 130

EPILOG = """\b
Configuration (first found wins):
  --api-key / --url, then GPUBROKER_API_KEY / GPUBROKER_URL, then the
  config file that `gpb login` writes, readable by its owner only:
  $XDG_CONFIG_HOME/gpubroker/config.toml (~/.config/gpubroker/config.toml),
  or GPUBROKER_CONFIG. The URL defaults to http://127.0.0.1:8000.

\b
Exit codes:
  0    success
  1    the API refused the request (400, 404, 413, 422 ...)
  2    usage error: a bad option or argument
  3    conflict (409): capacity unavailable, credit limit exceeded,
       an invalid transition, an Idempotency-Key reused
  4    authentication or permission: no key, a bad key (401), a role
       or read-only key that may not do this (403)
  5    the API could not be reached, or answered 5xx or 429, after retries
  6    requests create --wait: the request expired, was cancelled, or
       --timeout passed before it filled
  7    usage upload: done, but some records were rejected (see --rejects)
  130  interrupted (Ctrl-C)
"""


def exit_code(error: GpubrokerError) -> int:
    if isinstance(error, (AuthenticationFailed, PermissionDenied, ConfigurationError)):
        return EXIT_AUTH
    if isinstance(error, Conflict):
        return EXIT_CONFLICT
    if isinstance(error, (ServerError, RateLimited, TransportError)):
        return EXIT_UNAVAILABLE
    return EXIT_API_ERROR


class State:
    def __init__(self, api_key: str | None, url: str | None, as_json: bool):
        self.api_key, self.url, self.json = api_key, url, as_json
        self._client: Client | None = None
        # Not a terminal (a pipe, a file): wide enough that a table's rows stay on one line.
        self.out = Console(width=None if sys.stdout.isatty() else 200)
        self.err = Console(stderr=True)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.api_key, self.url, user_agent=f"gpb/{__version__}")
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class GpbGroup(click.Group):
    """Turns the client's errors into a message on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GpubrokerError as error:
            state = ctx.find_object(State)
            as_json = state.json if state else False
            report_error(error, as_json)
            ctx.exit(exit_code(error))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def report_error(error: GpubrokerError, as_json: bool) -> None:
    if isinstance(error, ApiError):
        if as_json:
            body = {"status": error.status, "code": error.code, "message": error.message, "fields": error.fields}
            click.echo(json.dumps({"error": body}), err=True)
            return
        click.echo(f"error: {error.code} ({error.status}): {error.message}", err=True)
        for name, detail in error.fields.items():
            click.echo(f"  {name}: {json.dumps(detail) if not isinstance(detail, str) else detail}", err=True)
        return
    if as_json:
        click.echo(json.dumps({"error": {"code": type(error).__name__, "message": str(error)}}), err=True)
    else:
        click.echo(f"error: {error}", err=True)


pass_state = click.make_pass_decorator(State)


def json_option(command: Callable) -> Callable:
    """``--json`` on every command too, so it may come after the command's name."""

    def turn_on(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(State).json = True

    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=turn_on,
                        help="Machine-readable output: JSON on stdout.")(command)  # fmt: skip


def limit_option(default: int | None = None) -> Callable:
    return click.option("--limit", type=click.IntRange(min=1), default=default, show_default=default is not None,
                        help="Show at most this many (all pages are followed otherwise).")  # fmt: skip


# --- output ---------------------------------------------------------------------------------------

COLUMNS: dict[type, list[str]] = {
    m.Listing: ["id", "provider", "cluster.name", "cluster.gpu_model", "cluster.region", "node_count",
                "available_gpus", "starts_at", "ends_at", "price_per_gpu_hour", "billing_mode", "status"],
    m.Contract: ["id", "listing", "provider", "lab", "gpu_count", "node_count", "starts_at", "ends_at",
                 "price_per_gpu_hour", "billing_mode", "status"],
    m.ComputeRequest: ["id", "gpu_model", "gpu_count", "starts_at", "duration_hours", "max_price_per_gpu_hour",
                       "billing_mode", "status", "unfilled_reason", "contracts"],
    m.Cluster: ["id", "name", "gpu_model", "region", "interconnect", "gpus_per_node", "node_count"],
    m.Node: ["id", "hostname", "status"],
    m.Invoice: ["id", "number", "period", "status", "total", "amount_due"],
    m.PayoutStatement: ["id", "period", "status", "gross", "fee", "net"],
    m.ApiKey: ["id", "name", "prefix", "scope", "created_at", "revoked_at"],
    m.Event: ["id", "type", "created", "data.object", "data.id"],
    m.UsageRecord: ["id", "contract", "node", "started_at", "ended_at", "gpu_seconds", "period"],
    m.WebhookEndpoint: ["id", "url", "event_types", "status"],
    m.Quote: ["id", "gpu_model", "gpu_count", "starts_at", "duration_hours", "total_amount",
              "average_price_per_gpu_hour", "status", "expires_at", "contract_ids"],
}  # fmt: skip


def plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def field_of(data: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def columns_for(model: type) -> list[str]:
    for cls in model.__mro__:
        if cls in COLUMNS:
            return COLUMNS[cls]
    return list(model.model_fields)


def show_list(state: State, items: Iterable[BaseModel], model: type, limit: int | None = None, title: str = ""):
    rows = list(islice(items, limit) if limit else items)
    if state.json:
        click.echo(json.dumps(plain(rows)))
        return
    names = columns_for(model)
    # The available_* figures only mean something in a search with a window: keep a column that has data.
    dumped = [plain(row) for row in rows]
    names = [name for name in names if any(field_of(row, name) not in (None, "") for row in dumped) or name == "id"]
    table = Table(title=title or None, header_style="bold")
    for name in names:
        table.add_column(name, overflow="fold")
    for row in dumped:
        table.add_row(*(cell(field_of(row, name)) for name in names))
    state.out.print(table)
    if not rows:
        state.err.print("(none)")


def show_object(state: State, item: BaseModel | dict, title: str = ""):
    data = plain(item)
    if state.json:
        click.echo(json.dumps(data))
        return
    table = Table(title=title or None, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in data.items():
        table.add_row(name, cell(value))
    state.out.print(table)


# --- input ---------------------------------------------------------------------------------------

RELATIVE = re.compile(r"^\+(\d+)([hd])$")


class Moment(click.ParamType):
    """An ISO 8601 time with a zone (``2026-12-01T10:00:00Z``), or ``+Nh`` / ``+Nd``: that many
    hours or days after the current whole UTC hour."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        match = RELATIVE.match(value.strip())
        if match:
            amount, unit = int(match[1]), match[2]
            hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            return hour + (timedelta(hours=amount) if unit == "h" else timedelta(days=amount))
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither an ISO 8601 time nor +Nh / +Nd", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no zone: add Z for UTC", param, ctx)
        return moment


MOMENT = Moment()
BILLING_MODES = click.Choice([mode.value for mode in m.BillingModeEnum])
INTERCONNECTS = click.Choice([mode.value for mode in m.InterconnectEnum])


# --- the commands --------------------------------------------------------------------------------


@click.group(cls=GpbGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--api-key", envvar="GPUBROKER_API_KEY", metavar="KEY", help="The API key (gpb_...).")
@click.option("--url", envvar="GPUBROKER_URL", metavar="URL", help="The API's base URL, e.g. https://api.example.com.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: JSON on stdout.")
@click.version_option(__version__, prog_name="gpb")
@click.pass_context
def cli(ctx: click.Context, api_key: str | None, url: str | None, as_json: bool) -> None:
    """gpb: book GPU capacity (labs) and sell it (providers) on the GPU compute brokerage.

    Lists follow every page; `--json` prints JSON instead of tables, errors as
    {"error": {"status", "code", "message", "fields"}} on stderr. Every change is sent with an
    Idempotency-Key, so the retries on a lost connection, a 429 or a 5xx never do it twice.
    """
    state = ctx.ensure_object(State)
    state.api_key, state.url, state.json = api_key, url, as_json
    ctx.call_on_close(state.close)


def main() -> None:
    cli(obj=State(None, None, False), prog_name="gpb")


@cli.command()
@click.option("--api-key", "key", prompt="API key", hide_input=True, help="The key to store (asked when omitted).")
@click.option("--url", "login_url", help="The API's base URL to store with it.")
@click.option("--no-check", is_flag=True, help="Store the key without checking it against the API.")
@json_option
@pass_state
def login(state: State, key: str, login_url: str | None, no_check: bool) -> None:
    """Store an API key (and URL) in the config file, readable by its owner only.

    The key is checked first by reading your organization, unless --no-check.
    """
    url = login_url or state.url
    values = {"api_key": key.strip()} | ({"url": url} if url else {})
    organization = None
    if not no_check:
        with Client(key.strip(), url or resolve().url) as client:
            organization = client.organization.get()
    path = write_config(values)
    if state.json:
        click.echo(json.dumps({"config": str(path), "organization": plain(organization)}))
    else:
        who = f" for {organization.name}" if organization else ""
        state.err.print(f"Stored the key{who} in {path} (mode 0600).")


@cli.group(cls=GpbGroup)
def config() -> None:
    """Show the configuration in use."""


@config.command("show")
@json_option
@pass_state
def config_show(state: State) -> None:
    """Where the key and URL come from (the key is masked)."""
    settings = resolve(state.api_key, state.url)
    key = settings.api_key
    masked = f"{key[:8]}...{key[-4:]}" if key and len(key) > 16 else ("set" if key else None)
    data = {"url": settings.url, "api_key": masked, "config_file": str(config_path()),
            "config_file_exists": config_path().exists(), "stored": sorted(read_config())}  # fmt: skip
    show_object(state, data)


@cli.command()
@json_option
@pass_state
def whoami(state: State) -> None:
    """Your organization: roles, credit limit, exposure."""
    show_object(state, state.client.organization.get())


# --- labs ---


@cli.command()
@click.option("--gpu-model", help="A GPU model's slug, e.g. h100-sxm-80gb (`gpb gpu-models`).")
@click.option("--gpus", "min_gpus", type=click.IntRange(min=1), help="At least this many GPUs available.")
@click.option("--start", "starts_at", type=MOMENT, help="The window's start: ISO 8601 or +Nh / +Nd.")
@click.option("--end", "ends_at", type=MOMENT, help="The window's end.")
@click.option("--hours", type=click.IntRange(min=1), help="The window's length from --start, instead of --end.")
@click.option("--max-price", help="The most per GPU-hour, e.g. 2.50.")
@click.option("--region", help="Only clusters in this region, e.g. us-south-1.")
@click.option("--interconnect", type=INTERCONNECTS, help="Only this network between nodes.")
@click.option("--billing-mode", type=BILLING_MODES, help="committed (every hour booked is paid) or metered (use).")
@click.option("--min-availability", help="Measured availability over 30 days, in percent, e.g. 99.5.")
@click.option("--mine", is_flag=True, help="Your own listings (providers).")
@limit_option(50)
@json_option
@pass_state
def search(state: State, hours: int | None, limit: int, mine: bool, **filters: Any) -> None:
    """Search listings on offer, cheapest first.

    With a window (--start and --end or --hours), only listings that can deliver all of it,
    with the GPUs still available in it.
    """
    if hours is not None:
        if filters["starts_at"] is None:
            raise click.UsageError("--hours needs --start")
        filters["ends_at"] = filters["starts_at"] + timedelta(hours=hours)
    results = state.client.listings.search(**filters, mine=mine or None)
    show_list(state, results, m.Listing, limit)


@cli.command()
@click.argument("listing", type=int)
@click.option("--gpus", "gpu_count", type=click.IntRange(min=1), required=True, help="GPUs to book.")
@click.option("--start", "starts_at", type=MOMENT, required=True, help="A whole UTC hour: ISO 8601 or +Nh / +Nd.")
@click.option("--hours", "duration_hours", type=click.IntRange(min=1), required=True, help="Hours from --start.")
@click.option("--idempotency-key", help="Your own key for this booking, to repeat the command safely.")
@json_option
@pass_state
def book(state: State, listing: int, idempotency_key: str | None, **fields: Any) -> None:
    """Book GPUs of LISTING for a window: prints the contract.

    Exit code 3 when the capacity is gone (capacity_unavailable) or the booking would pass
    your credit limit (credit_limit_exceeded).
    """
    contract = state.client.listings.book(listing, idempotency_key=idempotency_key, **fields)
    show_object(state, contract, title=f"Contract {contract.id}")


@cli.group(cls=GpbGroup)
def requests() -> None:
    """Compute requests: capacity the broker finds for you, now or as it appears."""


@requests.command("create")
@click.option("--gpu-model", required=True, help="A GPU model's slug, e.g. h100-sxm-80gb.")
@click.option("--gpus", "gpu_count", type=click.IntRange(min=1), required=True, help="GPUs wanted.")
@click.option("--start", "starts_at", type=MOMENT, required=True, help="A whole UTC hour: ISO 8601 or +Nh / +Nd.")
@click.option("--hours", "duration_hours", type=click.IntRange(min=1), required=True, help="Hours from --start.")
@click.option("--max-price", "max_price_per_gpu_hour", required=True, help="The most per GPU-hour, e.g. 2.50.")
@click.option("--billing-mode", type=BILLING_MODES, default="metered", show_default=True,
              help="committed (every hour is paid) or metered (use is paid).")  # fmt: skip
@click.option("--colocated", is_flag=True, help="Fill from one cluster only.")
@click.option("--region", help="Only clusters in this region.")
@click.option("--interconnect", type=INTERCONNECTS, help="Only this network between nodes.")
@click.option("--idempotency-key", help="Your own key for this request, to repeat the command safely.")
@click.option("--wait", is_flag=True, help="Follow the request until it fills, expires or is cancelled.")
@click.option("--timeout", type=click.FloatRange(min=0), default=600, show_default=True,
              help="With --wait: give up after this many seconds (exit code 6).")  # fmt: skip
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="With --wait: seconds between looks.")  # fmt: skip
@json_option
@pass_state
def requests_create(
    state: State, wait: bool, timeout: float, poll_interval: float, idempotency_key: str | None, colocated: bool,
    **fields: Any,
) -> None:  # fmt: skip
    """Post a compute request; the broker fills it from listings on its terms.

    With --wait, follow it until it fills (exit 0, its contracts printed), expires or is
    cancelled (exit 6).
    """
    request = state.client.compute_requests.create(idempotency_key=idempotency_key, colocated=colocated, **fields)
    if wait:
        request = follow(state, request, timeout, poll_interval)
    show_object(state, request, title=f"Compute request {request.id}")
    if wait and request.status != m.ComputeStatusEnum.FILLED:
        sys.exit(EXIT_NOT_FILLED)


def follow(state: State, request: m.ComputeRequest, timeout: float, interval: float) -> m.ComputeRequest:
    deadline = time.monotonic() + timeout
    last = None
    while request.status == m.ComputeStatusEnum.OPEN:
        note = f"request {request.id}: open" + (f", {request.unfilled_detail}" if request.unfilled_detail else "")
        if note != last and not state.json:
            state.err.print(note)
            last = note
        if time.monotonic() >= deadline:
            state.err.print(f"request {request.id}: still open after {timeout:g} s")
            return request
        time.sleep(interval)
        request = state.client.compute_requests.get(request.id)
    if not state.json:
        state.err.print(f"request {request.id}: {request.status}")
    return request


@requests.command("list")
@click.option("--status", type=click.Choice([status.value for status in m.ComputeStatusEnum]),
              help="Only requests in this state.")  # fmt: skip
@limit_option()
@json_option
@pass_state
def requests_list(state: State, status: str | None, limit: int | None) -> None:
    """Your compute requests, newest first."""
    show_list(state, state.client.compute_requests.list(status=status), m.ComputeRequest, limit)


@requests.command("show")
@click.argument("request_id", type=int)
@json_option
@pass_state
def requests_show(state: State, request_id: int) -> None:
    """One compute request: its status, why it is not filled yet, its contracts."""
    show_object(state, state.client.compute_requests.get(request_id))


@requests.command("cancel")
@click.argument("request_id", type=int)
@json_option
@pass_state
def requests_cancel(state: State, request_id: int) -> None:
    """Cancel an open compute request."""
    show_object(state, state.client.compute_requests.cancel(request_id))


@cli.group(cls=GpbGroup)
def quotes() -> None:
    """Quotes (labs): what the broker would fill now, at a price that holds until it expires."""


@quotes.command("create")
@click.option("--gpu-model", required=True, help="A GPU model's slug, e.g. h100-sxm-80gb.")
@click.option("--gpus", "gpu_count", type=click.IntRange(min=1), required=True, help="GPUs wanted.")
@click.option("--start", "starts_at", type=MOMENT, required=True, help="A whole UTC hour: ISO 8601 or +Nh / +Nd.")
@click.option("--hours", "duration_hours", type=click.IntRange(min=1), required=True, help="Hours from --start.")
@click.option("--billing-mode", type=BILLING_MODES, default="metered", show_default=True,
              help="committed (every hour is paid) or metered (use is paid).")  # fmt: skip
@click.option("--colocated", is_flag=True, help="Fill from one cluster only.")
@click.option("--region", help="Only clusters in this region.")
@click.option("--accept", is_flag=True, help="Accept it at once: book every line at its price, or nothing.")
@json_option
@pass_state
def quotes_create(state: State, accept: bool, colocated: bool, **fields: Any) -> None:
    """Ask for a quote: the listings and GPUs the broker would fill now, their total, and
    until when it may be accepted. It holds no capacity: accept it before someone else buys.

    Exit code 3 when nothing fills these terms now, or (--accept) when a price or the capacity
    changed since.
    """
    quote = state.client.quotes.create(colocated=colocated, **fields)
    if accept:
        quote = state.client.quotes.accept(quote.id)
    show_quote(state, quote)


@quotes.command("accept")
@click.argument("quote_id", type=int)
@json_option
@pass_state
def quotes_accept(state: State, quote_id: int) -> None:
    """Book every line of a quote at its price, one contract per line, or nothing (exit code 3)."""
    show_quote(state, state.client.quotes.accept(quote_id))


@quotes.command("show")
@click.argument("quote_id", type=int)
@json_option
@pass_state
def quotes_show(state: State, quote_id: int) -> None:
    """One quote with its lines."""
    show_quote(state, state.client.quotes.get(quote_id))


@quotes.command("list")
@limit_option()
@json_option
@pass_state
def quotes_list(state: State, limit: int | None) -> None:
    """Your quotes, newest first."""
    show_list(state, state.client.quotes.list(), m.Quote, limit)


def show_quote(state: State, quote: m.Quote) -> None:
    if state.json:
        show_object(state, quote)
        return
    show_object(state, plain(quote) | {"lines": f"{len(quote.lines)} lines (below)"}, title=f"Quote {quote.id}")
    show_list(state, quote.lines, m.QuoteLine, title="Lines")


@cli.group(cls=GpbGroup)
def contracts() -> None:
    """Contracts: what you bought (labs) or sold (providers)."""


@contracts.command("list")
@click.option("--status", type=click.Choice([status.value for status in m.ContractStatusEnum]),
              help="Only contracts in this state.")  # fmt: skip
@click.option("--billing-mode", type=BILLING_MODES, help="Only committed or only metered contracts.")
@limit_option()
@json_option
@pass_state
def contracts_list(state: State, status: str | None, billing_mode: str | None, limit: int | None) -> None:
    """Your contracts, newest first."""
    show_list(state, state.client.contracts.list(status=status, billing_mode=billing_mode), m.Contract, limit)


@contracts.command("show")
@click.argument("contract_id", type=int)
@json_option
@pass_state
def contracts_show(state: State, contract_id: int) -> None:
    """One contract: parties, window, price, its nodes."""
    show_object(state, state.client.contracts.get(contract_id))


@contracts.command("terminate")
@click.argument("contract_id", type=int)
@json_option
@pass_state
def contracts_terminate(state: State, contract_id: int) -> None:
    """End a metered contract early (labs): its nodes are freed from the next whole hour."""
    show_object(state, state.client.contracts.terminate(contract_id))


@cli.group(cls=GpbGroup)
def invoices() -> None:
    """Invoices (labs)."""


@invoices.command("list")
@click.option("--status", type=click.Choice([status.value for status in m.InvoiceStatusEnum]),
              help="Only invoices in this state.")  # fmt: skip
@limit_option()
@json_option
@pass_state
def invoices_list(state: State, status: str | None, limit: int | None) -> None:
    """Your invoices, newest first."""
    show_list(state, state.client.invoices.list(status=status), m.Invoice, limit)


@invoices.command("show")
@click.argument("invoice_id", type=int)
@json_option
@pass_state
def invoices_show(state: State, invoice_id: int) -> None:
    """One invoice with its lines."""
    invoice = state.client.invoices.get(invoice_id)
    if state.json:
        show_object(state, invoice)
        return
    summary = plain(invoice) | {"lines": f"{len(invoice.lines)} lines (below)"}
    show_object(state, summary)
    show_list(state, invoice.lines, m.InvoiceLine, title="Lines")


@invoices.command("preview")
@click.option("--period", metavar="YYYY-MM", help="The month; this month when omitted.")
@json_option
@pass_state
def invoices_preview(state: State, period: str | None) -> None:
    """What the month's invoice would bill if it closed now."""
    preview = state.client.invoices.preview(period=period or f"{datetime.now(UTC):%Y-%m}")
    if state.json:
        show_object(state, preview)
        return
    state.out.print(f"Preview of {preview.period}: total {preview.total}")
    table = Table(header_style="bold")
    names = ["contract", "kind", "description", "quantity", "unit_price", "amount"]
    for name in names:
        table.add_column(name, overflow="fold")
    for line in preview.lines:
        table.add_row(*(cell(line.get(name)) for name in names))
    state.out.print(table)


# --- providers ---


@cli.group(cls=GpbGroup)
def clusters() -> None:
    """Your clusters (providers)."""


@clusters.command("create")
@click.option("--name", required=True, help="Your name for it, unique among your clusters.")
@click.option("--gpu-model", required=True, help="A GPU model's slug, e.g. h100-sxm-80gb.")
@click.option("--region", required=True, help="Where it is, e.g. us-south-1.")
@click.option("--interconnect", type=INTERCONNECTS, required=True, help="The network between its nodes.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), required=True, help="GPUs in each node.")
@click.option("--nodes", "node_count", type=click.IntRange(min=1), required=True, help="Nodes to register.")
@json_option
@pass_state
def clusters_create(state: State, **fields: Any) -> None:
    """Register a cluster and its nodes (hostnames generated)."""
    show_object(state, state.client.clusters.create(**fields))


@clusters.command("list")
@limit_option()
@json_option
@pass_state
def clusters_list(state: State, limit: int | None) -> None:
    """Your clusters."""
    show_list(state, state.client.clusters.list(), m.Cluster, limit)


@cli.group(cls=GpbGroup)
def nodes() -> None:
    """A cluster's nodes (providers)."""


@nodes.command("list")
@click.argument("cluster_id", type=int)
@limit_option()
@json_option
@pass_state
def nodes_list(state: State, cluster_id: int, limit: int | None) -> None:
    """The nodes of CLUSTER_ID."""
    show_list(state, state.client.clusters.nodes(cluster_id), m.Node, limit)


@nodes.command("set-status")
@click.argument("cluster_id", type=int)
@click.argument("node_id", type=int)
@click.argument("status", type=click.Choice([status.value for status in m.NodeUpdateStatusEnum]))
@json_option
@pass_state
def nodes_set_status(state: State, cluster_id: int, node_id: int, status: str) -> None:
    """Take NODE_ID out for maintenance, or put it back in service.

    A node taken out hands its reservations to free nodes of the cluster.
    """
    show_object(state, state.client.clusters.set_node_status(cluster_id, node_id, status))


@cli.group(cls=GpbGroup)
def listings() -> None:
    """Your offers (providers). Labs: `gpb search`."""


@listings.command("create")
@click.option("--cluster", type=int, help="The cluster whose nodes you offer (providers).")
@click.option("--contract", type=int, help="Resell unused hours of this committed contract you bought (labs).")
@click.option("--nodes", "node_count", type=click.IntRange(min=1), required=True, help="Nodes offered.")
@click.option("--start", "starts_at", type=MOMENT, required=True, help="A whole UTC hour: ISO 8601 or +Nh / +Nd.")
@click.option("--end", "ends_at", type=MOMENT, required=True, help="A whole UTC hour after --start.")
@click.option("--price", "price_per_gpu_hour", required=True, help="Per GPU-hour, e.g. 2.10.")
@click.option("--billing-mode", type=BILLING_MODES,
              help="With --cluster: committed (buyers pay every hour booked) or metered (the GPU-hours they "
                   "use). A resale is committed.")  # fmt: skip
@click.option("--min-hours", "min_duration_hours", type=click.IntRange(min=1), help="The shortest booking, in hours.")
@click.option("--sla-availability", help="Availability promised, percent (50-100; 99.00 when omitted).")
@click.option("--sla-credit-rate", "sla_breach_credit_rate", help="Credit multiple past the promise (1-10).")
@click.option("--idempotency-key", help="Your own key for this listing, to repeat the command safely.")
@json_option
@pass_state
def listings_create(state: State, idempotency_key: str | None, **fields: Any) -> None:
    """Offer nodes of a cluster for a window at a price per GPU-hour, or resell unused hours of
    a committed contract (--contract): whole nodes, whole UTC hours up to the contract's end."""
    if (fields["cluster"] is None) == (fields["contract"] is None):
        raise click.UsageError("give --cluster (a provider's nodes) or --contract (a resale), not both")
    if fields["cluster"] is not None and fields["billing_mode"] is None:
        raise click.UsageError("--cluster needs --billing-mode")
    fields = {name: value for name, value in fields.items() if value is not None}
    show_object(state, state.client.listings.create(idempotency_key=idempotency_key, **fields))


@listings.command("update")
@click.argument("listing_id", type=int)
@click.option("--price", "price_per_gpu_hour", help="A new price per GPU-hour, for new contracts.")
@click.option("--status", type=click.Choice([status.value for status in m.ListingUpdateStatusEnum]),
              help="Pause or resume.")  # fmt: skip
@click.option("--sla-availability", help="A new availability promise, for new contracts.")
@click.option("--sla-credit-rate", "sla_breach_credit_rate", help="A new credit multiple, for new contracts.")
@json_option
@pass_state
def listings_update(state: State, listing_id: int, **fields: Any) -> None:
    """Change a listing's price, status or promise."""
    if not any(value is not None for value in fields.values()):
        raise click.UsageError("nothing to change: give --price, --status, --sla-availability or --sla-credit-rate")
    show_object(state, state.client.listings.update(listing_id, **fields))


@listings.command("withdraw")
@click.argument("listing_id", type=int)
@json_option
@pass_state
def listings_withdraw(state: State, listing_id: int) -> None:
    """Withdraw a listing for good (contracts already sold stand)."""
    show_object(state, state.client.listings.withdraw(listing_id))


@listings.command("show")
@click.argument("listing_id", type=int)
@json_option
@pass_state
def listings_show(state: State, listing_id: int) -> None:
    """One listing, with what is still available."""
    show_object(state, state.client.listings.get(listing_id))


@cli.group(cls=GpbGroup)
def usage() -> None:
    """Usage records (providers)."""


@usage.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "declared_format", type=click.Choice(["jsonl", "csv"]),
              help="The file's format; by its extension when omitted (.csv, else JSON lines).")  # fmt: skip
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write rejected records (JSON lines); FILE.rejects.jsonl when omitted.")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(1, BATCH), default=BATCH, show_default=True,
              help="Records per call (the API takes 1,000 at most).")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Batches in flight at once.")  # fmt: skip
@click.option("--progress/--no-progress", default=None, help="A progress bar (on a terminal by default).")
@click.option("--max-batches", "stop_after", type=click.IntRange(min=1),
              help="Send this many batches at most (a trial run); the rest on the next upload.")  # fmt: skip
@json_option
@pass_state
def usage_upload(
    state: State, file: Path, declared_format: str | None, rejects: Path | None, batch_size: int, concurrency: int,
    progress: bool | None, stop_after: int | None,
) -> None:  # fmt: skip
    """Upload usage records from FILE, JSON lines or CSV, in batches of 1,000.

    \b
    One record per line: {"id", "contract", "node" (optional), "started_at", "ended_at",
    "gpu_seconds"}; a CSV has those columns in a header row. Prints how many records were
    accepted, were duplicates (their id was stored before) and were rejected; rejected records
    go to --rejects with why (exit code 7). On Ctrl-C the batches already sent are waited
    for and counted (exit code 130). Uploading the same file again after an interruption is
    safe: what was stored answers as duplicates.
    """
    fmt = file_format(file, declared_format)
    total = count_lines(file) - (1 if fmt == "csv" else 0)
    show_bar = (sys.stderr.isatty() and not state.json) if progress is None else progress
    bar = Progress(TextColumn("uploading"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
                   TimeElapsedColumn(), console=state.err, disable=not show_bar)  # fmt: skip
    with bar:
        task = bar.add_task("upload", total=max(total, 0), counts="")

        def advance(summary: UploadSummary, done: int) -> None:
            counts = f"accepted {summary.accepted:,} duplicates {summary.duplicates:,} rejected {summary.rejected:,}"
            bar.update(task, completed=done, counts=counts)

        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: finish the batches sent
        try:
            summary = upload(state.client, file, file_format=fmt, batch_size=batch_size, concurrency=concurrency,
                             on_batch=advance, stop_after=stop_after, stop=stop)  # fmt: skip
        finally:
            signal.signal(signal.SIGINT, previous)
    rejects_path = None
    if summary.rejections:
        rejects_path = rejects or file.with_name(file.name + ".rejects.jsonl")
        with rejects_path.open("w") as handle:
            for rejection in summary.rejections:
                handle.write(json.dumps({"line": rejection.line, "id": rejection.id, "code": rejection.code,
                                         "message": rejection.message, "record": rejection.record}) + "\n")  # fmt: skip
    result = summary.as_dict() | {"rejects_file": str(rejects_path) if rejects_path else None}
    if state.json:
        click.echo(json.dumps(result))
    else:
        state.out.print(
            f"{summary.records:,} records in {summary.batches:,} batches: {summary.accepted:,} accepted, "
            f"{summary.duplicates:,} duplicates, {summary.rejected:,} rejected"
        )
        if rejects_path:
            state.out.print(f"rejected records, with why: {rejects_path}")
        if summary.interrupted:
            state.out.print("interrupted: upload the same file again to send the rest (what was stored is skipped)")
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if summary.rejected:
        sys.exit(EXIT_REJECTED)


def count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            count += chunk.count(b"\n")
    return count


@usage.command("list")
@click.option("--contract", type=int, help="Only this contract's records.")
@limit_option(100)
@json_option
@pass_state
def usage_list(state: State, contract: int | None, limit: int | None) -> None:
    """Usage records you reported."""
    show_list(state, state.client.usage.list(contract=contract), m.UsageRecord, limit)


@cli.group(cls=GpbGroup)
def payouts() -> None:
    """Payout statements (providers)."""


@payouts.command("list")
@limit_option()
@json_option
@pass_state
def payouts_list(state: State, limit: int | None) -> None:
    """Your monthly payout statements: gross, the platform's fee, net."""
    show_list(state, state.client.payouts.list(), m.PayoutStatement, limit)


@payouts.command("show")
@click.argument("payout_id", type=int)
@json_option
@pass_state
def payouts_show(state: State, payout_id: int) -> None:
    """One payout statement."""
    show_object(state, state.client.payouts.get(payout_id))


# --- both ---


@cli.group(cls=GpbGroup)
def keys() -> None:
    """Your organization's API keys."""


@keys.command("create")
@click.option("--name", required=True, help="To tell your keys apart.")
@click.option("--scope", type=click.Choice([scope.value for scope in m.ScopeEnum]), default="full", show_default=True,
              help="full: reads and writes; read_only: GET requests only.")  # fmt: skip
@json_option
@pass_state
def keys_create(state: State, name: str, scope: str) -> None:
    """Issue a key: its secret is printed this once."""
    show_object(state, state.client.api_keys.create(name=name, scope=scope))


@keys.command("list")
@limit_option()
@json_option
@pass_state
def keys_list(state: State, limit: int | None) -> None:
    """Your keys (never their secrets)."""
    show_list(state, state.client.api_keys.list(), m.ApiKey, limit)


@keys.command("revoke")
@click.argument("key_id", type=int)
@json_option
@pass_state
def keys_revoke(state: State, key_id: int) -> None:
    """Revoke a key: it stops working at once."""
    show_object(state, state.client.api_keys.revoke(key_id))


@cli.command()
@click.option("--type", "event_type", type=click.Choice([kind.value for kind in m.EventTypeEnum]),
              help="Only events of this type.")  # fmt: skip
@limit_option(20)
@json_option
@pass_state
def events(state: State, event_type: str | None, limit: int) -> None:
    """Your events, newest first (kept 90 days)."""
    show_list(state, state.client.events.list(type=event_type), m.Event, limit)


@cli.group(cls=GpbGroup)
def market() -> None:
    """Market data of a GPU model: the order book, trades, the daily price index."""


@market.command("book")
@click.argument("gpu_model")
@click.option("--start", "starts_at", type=MOMENT, help="The window's start; the next whole hour when omitted.")
@click.option("--end", "ends_at", type=MOMENT, help="The window's end; an hour after the start when omitted.")
@click.option("--region", help="Only this region.")
@click.option("--levels", type=click.IntRange(1, 500), help="Price levels of each side, best first (50).")
@json_option
@pass_state
def market_book(state: State, gpu_model: str, **params: Any) -> None:
    """The order book of GPU_MODEL for a window: asks (GPUs free, by price) and bids (open requests)."""
    book = state.client.market.book(gpu_model, **params)
    if state.json:
        show_object(state, book)
        return
    state.out.print(f"{book.gpu_model} {book.region or 'all regions'}, {book.starts_at:%Y-%m-%d %H:%M} to "
                    f"{book.ends_at:%Y-%m-%d %H:%M} UTC")  # fmt: skip
    for side, levels in (("Asks", book.asks), ("Bids", book.bids)):
        show_list(state, levels, m.Level, title=side)


@market.command("trades")
@click.argument("gpu_model")
@click.option("--since", type=MOMENT, help="Trades signed since then (at most 31 days back; 24 hours when omitted).")
@limit_option(100)
@json_option
@pass_state
def market_trades(state: State, gpu_model: str, since: datetime | None, limit: int) -> None:
    """Recent trades of GPU_MODEL, anonymous: price, GPUs, hours."""
    show_list(state, state.client.market.trades(gpu_model, since=since), m.Trade, limit)


@market.command("index")
@click.argument("gpu_model")
@click.option("--from", "from_", metavar="YYYY-MM-DD", help="The first UTC day (29 days before --to).")
@click.option("--to", metavar="YYYY-MM-DD", help="The last UTC day (yesterday).")
@json_option
@pass_state
def market_index(state: State, gpu_model: str, from_: str | None, to: str | None) -> None:
    """The daily price index of GPU_MODEL: open, high, low, close, VWAP and volume per day."""
    index = state.client.market.index(gpu_model, from_=from_, to=to)
    if state.json:
        show_object(state, index)
        return
    show_list(state, index.days, m.IndexDay, title=f"{index.gpu_model}, {index.from_} to {index.to}")


@cli.command("gpu-models")
@json_option
@pass_state
def gpu_models(state: State) -> None:
    """The GPU models of the catalog, with their slugs."""
    show_list(state, state.client.gpu_models.list(), m.GpuModel)


@cli.group(cls=GpbGroup)
def webhooks() -> None:
    """Webhook deliveries."""


@webhooks.command("listen")
@click.option("--forward-to", metavar="URL", help="POST each verified delivery on to this URL, headers and all.")
@click.option("--secret", envvar="GPUBROKER_WEBHOOK_SECRET", metavar="WHSEC",
              help="The endpoint's signing secret (whsec_...); GPUBROKER_WEBHOOK_SECRET.")  # fmt: skip
@click.option("--register", is_flag=True,
              help="Register an endpoint for this listener (its secret is used) and delete it on exit.")  # fmt: skip
@click.option("--public-url", metavar="URL",
              help="With --register: the https URL the API delivers to (a tunnel to this listener); "
                   "the listener's own address when omitted (a local API allows plain http to loopback).")  # fmt: skip
@click.option("--events", "event_types", default="*", show_default=True,
              help="With --register: event types, comma-separated, or * for all.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="The port; any free one when 0.")
@click.option("--tolerance", type=click.IntRange(min=1), default=300, show_default=True,
              help="Refuse a signature older or newer than this many seconds.")  # fmt: skip
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after this many verified deliveries.")
@json_option
@pass_state
def webhooks_listen(
    state: State, forward_to: str | None, secret: str | None, register: bool, public_url: str | None,
    event_types: str, host: str, port: int, tolerance: int, max_events: int | None,
) -> None:  # fmt: skip
    """Receive webhook deliveries here, verify their signatures and print them.

    \b
    Each delivery's Webhook-Signature is checked against the secret; a bad or stale one is
    answered 400 and neither printed as verified nor forwarded. With --forward-to, a verified
    delivery is POSTed on to your local handler with the same body and headers, and the
    listener answers with its status. Stops on Ctrl-C (or after --max-events).
    """
    if not secret and not register:
        raise click.UsageError("give the endpoint's --secret (or GPUBROKER_WEBHOOK_SECRET), or --register")
    listener = Listener(state, secret, forward_to, tolerance, max_events)
    server = ThreadingHTTPServer((host, port), listener.handler())
    address = f"http://{host}:{server.server_address[1]}/"
    endpoint = None
    try:
        if register:
            types = [kind.strip() for kind in event_types.split(",") if kind.strip()]
            endpoint = state.client.webhook_endpoints.create(url=public_url or address, event_types=types)
            listener.secret = endpoint.secret
            state.err.print(f"registered webhook endpoint {endpoint.id} for {endpoint.url}")
        state.err.print(f"listening on {address}" + (f", forwarding to {forward_to}" if forward_to else ""))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        listener.finished.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        if endpoint is not None:
            state.client.webhook_endpoints.delete(endpoint.id)
            state.err.print(f"deleted webhook endpoint {endpoint.id}")


FORWARDED_HEADERS = ("Content-Type", "Webhook-Id", "Webhook-Signature")


class Listener:
    def __init__(self, state: State, secret: str | None, forward_to: str | None, tolerance: int, limit: int | None):
        self.state, self.secret, self.forward_to = state, secret, forward_to
        self.tolerance, self.limit = tolerance, limit
        self.verified = 0
        self.finished = threading.Event()
        self.lock = threading.Lock()
        self.forwarder = httpx.Client(timeout=30) if forward_to else None

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        """Print one delivery; the status to answer the API with."""
        signature = headers.get("webhook-signature", "")
        delivery_id = headers.get("webhook-id", "-")
        if not self.secret or not verify(self.secret, signature, body, tolerance=self.tolerance):
            self.emit({"webhook_id": delivery_id, "verified": False}, f"{delivery_id}  signature INVALID: refused")
            return 400
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        status = 200
        forwarded = None
        if self.forwarder is not None:
            forward_headers = {name: headers[name.lower()] for name in FORWARDED_HEADERS if name.lower() in headers}
            try:
                response = self.forwarder.post(self.forward_to, content=body, headers=forward_headers)
                status = forwarded = response.status_code
            except httpx.HTTPError as exc:
                status, forwarded = 502, f"failed: {exc.__class__.__name__}"
        note = f"{delivery_id}  {event.get('type', '?')}  verified" + (f"  -> {forwarded}" if forwarded else "")
        self.emit({"webhook_id": delivery_id, "verified": True, "forwarded": forwarded, "event": event}, note)
        with self.lock:
            self.verified += 1
            if self.limit is not None and self.verified >= self.limit:
                self.finished.set()
        return status

    def emit(self, data: dict, text: str) -> None:
        with self.lock:
            if self.state.json:
                click.echo(json.dumps(data))
            else:
                self.state.out.print(f"{datetime.now(UTC):%H:%M:%S}  {text}", highlight=False)
            sys.stdout.flush()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = listener.receive(headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


if __name__ == "__main__":
    main()
