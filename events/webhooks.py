"""Where webhooks may go, and how one is sent.

A URL is checked when it is registered (``url_refusal``) and its host again at every delivery
against the addresses it resolves to then (``resolve_target``): a name that resolves to a
private, loopback or link-local address is never a target, whatever it resolved to before. The
request goes to the address that was checked (no second lookup), with ``Host`` and the TLS
server name set to the URL's host.
"""

import ipaddress
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from django.conf import settings

CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 10.0
RESPONSE_BODY_CAP = 4096  # bytes of an answer read at most; the status is what counts
USER_AGENT = "gpubroker-webhooks/1"
LOCALHOST_NAMES = frozenset({"localhost", "localhost."})

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """A delivery may not go to this URL now (its host resolves to a forbidden address, say)."""


def _address(text: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return address


def _literal(host: str) -> IpAddress | None:
    """The address a host names by itself, as a resolver reads it: an IP literal, with a
    trailing dot or in the legacy IPv4 forms getaddrinfo accepts (2130706433, 0x7f.1, 127.1)."""
    host = host.rstrip(".")
    address = _address(host)
    if address is None and host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return address


def address_refusal(address: IpAddress, *, allow_loopback: bool) -> str | None:
    """Why a webhook may not go to this address, or None. Only public unicast addresses are
    targets; loopback too when ``allow_loopback`` (development and tests)."""
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class ParsedUrl:
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    target: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> ParsedUrl:
    """Split a webhook URL, refusing (ValueError, with why) any that is not a plain http(s) URL."""
    if not url.isascii() or any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("Only ASCII URLs without spaces or control characters (punycode a name).")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"Not a valid URL ({exc}).") from None
    if parts.scheme not in ("https", "http"):
        raise ValueError("The URL must start with https://.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("No credentials in the URL: authenticate our requests by their signature.")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("The URL has no host.")
    if parts.fragment:
        raise ValueError("No fragment (#...) in the URL.")
    if port == 0:
        raise ValueError("Port 0 is not a port.")
    if _address(host) is None and not _is_hostname(host):
        raise ValueError("The host must be a domain name or an IP address.")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return ParsedUrl(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), target)


def _is_hostname(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-" and all(c.isalnum() or c == "-" for c in label)
        for label in labels
    )


def url_refusal(url: str, *, allow_loopback: bool | None = None) -> str | None:
    """Why this URL cannot be registered as a webhook endpoint, or None.

    https only; plain http only with ``WEBHOOK_ALLOW_LOOPBACK`` to a loopback address or
    ``localhost``. An IP literal must be a public address (loopback too with the allowance).
    """
    allow = settings.WEBHOOK_ALLOW_LOOPBACK if allow_loopback is None else allow_loopback
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        return str(exc)
    address = _literal(parsed.host)
    loopback = parsed.host in LOCALHOST_NAMES or (address is not None and address.is_loopback)
    if parsed.scheme == "http" and not (allow and loopback):
        return "The URL must start with https://."
    if parsed.host in LOCALHOST_NAMES and not allow:
        return "The host may not be localhost: webhooks go to public addresses only."
    if address is not None:
        why = address_refusal(address, allow_loopback=allow)
        if why:
            return f"The host is {why}: webhooks go to public addresses only."
    return None


def resolve_target(url: str, *, allow_loopback: bool | None = None) -> tuple[ParsedUrl, str]:
    """The URL and the one address to send to now; TargetRefused if ANY address its host
    resolves to is forbidden (a name with one private address among public ones is refused)."""
    allow = settings.WEBHOOK_ALLOW_LOOPBACK if allow_loopback is None else allow_loopback
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise TargetRefused(str(exc)) from None
    try:
        infos = socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"cannot resolve {parsed.host}: {exc}") from None
    addresses = [_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses or any(address is None for address in addresses):
        raise TargetRefused(f"{parsed.host} resolved to no usable address")
    for address in addresses:
        why = address_refusal(address, allow_loopback=allow)
        if why:
            raise TargetRefused(f"{parsed.host} resolves to {why} ({address})")
    if parsed.scheme == "http" and not (allow and all(address.is_loopback for address in addresses)):
        raise TargetRefused("plain http is allowed only to a loopback address with WEBHOOK_ALLOW_LOOPBACK")
    return parsed, str(addresses[0])


@dataclass(frozen=True)
class Outcome:
    status_code: int | None  # None when no answer came
    error: str  # empty on a 2xx

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


_TIMEOUT = urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS)
MAX_POOLS = 512


class Pools:
    """Keep-alive connection pools, one per (scheme, address, port, host): thread-safe, shared by
    the threads that send a batch, and kept across batches by one process."""

    def __init__(self, maxsize: int = 8):
        self._pools: dict[tuple, urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def get(self, parsed: ParsedUrl, ip: str) -> urllib3.HTTPConnectionPool:
        key = (parsed.scheme, ip, parsed.port, parsed.host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) >= MAX_POOLS:
                    self.clear_locked()
                if parsed.scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(
                        ip, parsed.port, maxsize=self._maxsize, timeout=_TIMEOUT, retries=False,
                        server_hostname=parsed.host, assert_hostname=parsed.host, cert_reqs="CERT_REQUIRED",
                    )  # fmt: skip
                else:
                    pool = urllib3.HTTPConnectionPool(
                        ip, parsed.port, maxsize=self._maxsize, timeout=_TIMEOUT, retries=False
                    )
                self._pools[key] = pool
            return pool

    def clear_locked(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def close(self) -> None:
        with self._lock:
            self.clear_locked()


def post(pools: Pools, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
    """POST one signed body: the outcome, never an exception. No redirect is followed, no retry
    made here (the delivery's schedule retries), at most ``RESPONSE_BODY_CAP`` bytes read."""
    try:
        parsed, ip = resolve_target(url)
    except TargetRefused as exc:
        return Outcome(None, f"refused: {exc}"[:500])
    pool = pools.get(parsed, ip)
    try:
        response = pool.urlopen(
            "POST",
            parsed.target,
            body=body,
            headers={**headers, "Host": parsed.host_header, "User-Agent": USER_AGENT},
            retries=False,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            timeout=_TIMEOUT,
        )
    except urllib3.exceptions.HTTPError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:500])
    try:  # the answer is read up to the cap; one byte more says whether it went on
        complete = not response.read(RESPONSE_BODY_CAP) or not response.read(1)
    except (urllib3.exceptions.HTTPError, OSError):
        complete = False
    if complete:
        response.release_conn()
    else:  # an answer longer than we read: the connection cannot be reused
        response.close()
        response.release_conn()
    status = response.status
    if 200 <= status < 300:
        return Outcome(status, "")
    if 300 <= status < 400:
        return Outcome(status, f"HTTP {status} (redirects are not followed)")
    return Outcome(status, f"HTTP {status}")
