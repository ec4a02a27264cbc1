"""Every call Lab Manager makes to another server: lab APIs, scanner and PMS vendors, and mail.

One httpx client per process (a forked work horse makes its own, so no connection is shared),
with keep-alive, explicit timeouts, no redirects and no proxies from the environment, and one
error type, `OutboundError`, whose `kind` says what the caller should do:

    "transient"  the server could not be reached, or said "later" (try again)
    "auth"       401: the credentials were refused
    "not_found"  404
    "refused"    any other 4xx: trying again will not help
    "host"       the address is one Lab Manager does not send to (below); nothing was sent

**Where we may connect.** Outside development (`LM_ENV` other than `development`) no request goes
to a loopback, private, link-local, carrier-grade NAT, multicast, reserved or unspecified
address, IPv4 or IPv6 (an IPv4-mapped IPv6 address counts as its IPv4 address), unless its host
is on `OUTBOUND_ALLOWED_HOSTS` (names, a leading dot for subdomains, IP addresses or networks:
a lab's or a PMS server inside the practice's network, an SMTP relay on localhost). The check is
made on the address actually connected to: the name is resolved when the connection is opened,
inside the client's transport (and inside `connect()` for SMTP), and only an address that passes
is dialled, so a name that resolved to a public address when a form was saved and to 10.0.0.1
now (DNS rebinding) is refused as well. `check_url` gives the same answer early, for a form.
"""
from __future__ import annotations

import email.utils
import ipaddress
import os
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

USER_AGENT = "LabManager/1"
_client: tuple[int, httpx.Client] | None = None
_tls: ssl.SSLContext | None = None


class OutboundError(Exception):
    """An outbound call that did not succeed; str(exc) is fit for people (a "last error")."""

    def __init__(self, message: str, kind: str, status_code: int | None = None,
                 retry_after: float | None = None, response: httpx.Response | None = None):
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code
        self.retry_after = retry_after
        self.response = response

    @property
    def transient(self) -> bool:
        return self.kind == "transient"


class BlockedAddress(OutboundError):
    """Raised by the transport before it dials an address it may not (nothing is sent)."""

    def __init__(self, message: str):
        super().__init__(message, "host")


# -- the address rule ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    guard: bool  # False in development: the demo lab and the sandboxes listen on loopback
    allowed: tuple[str, ...] = ()  # OUTBOUND_ALLOWED_HOSTS, lower case

    def host_allowed(self, host: str) -> bool:
        host = host.lower().strip("[]").rstrip(".")
        for entry in self.allowed:
            if entry.startswith(".") and (host.endswith(entry) or host == entry[1:]):
                return True
            if host == entry:
                return True
            network = _network(entry)
            ip = _ip(host)
            if network is not None and ip is not None and _plain(ip) in network:
                return True
        return False

    def address_allowed(self, host: str, address: str) -> bool:
        """May we connect to `address`, which `host` resolved to?"""
        if not self.guard or self.host_allowed(host):
            return True
        ip = _ip(address)
        if ip is None:
            return False
        if any(_plain(ip) in net for net in (_network(e) for e in self.allowed) if net is not None):
            return True
        return public(ip)


def public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A global unicast address: not loopback, private, link-local, CGNAT, multicast, reserved or
    unspecified (an IPv4-mapped IPv6 address is judged as its IPv4 address)."""
    ip = _plain(ip)
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                 or ip.is_loopback or ip.is_link_local or ip.is_private)


def _plain(ip):
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _network(entry: str):
    if "/" not in entry:
        return None
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def policy() -> Policy:
    """The rule in force: the app's settings when there is an app context, else the environment."""
    from flask import current_app, has_app_context

    if has_app_context():
        config = current_app.config
        return Policy(not config.get("DEVELOPMENT", False), parse_hosts(config.get("OUTBOUND_ALLOWED_HOSTS", "")))
    return Policy(os.environ.get("LM_ENV", "development") != "development",
                  parse_hosts(os.environ.get("OUTBOUND_ALLOWED_HOSTS", "")))


def parse_hosts(value: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in (value or "").split(",") if h.strip())


def _kind(address: str) -> str:
    ip = _plain(_ip(address))
    for name, test in (("a loopback", "is_loopback"), ("a link-local", "is_link_local"),
                       ("a multicast", "is_multicast"), ("an unspecified", "is_unspecified"),
                       ("a private", "is_private"), ("a reserved", "is_reserved")):
        if getattr(ip, test):
            return name
    return "a non-public"


def _blocked(host: str, address: str) -> BlockedAddress:
    shown = host if host == address else f"{host} ({address})"
    return BlockedAddress(
        f"Lab Manager does not connect to {shown}: it is {_kind(address)} address. If this server is "
        "meant to be inside your network, an administrator can allow its host in OUTBOUND_ALLOWED_HOSTS.")


def resolve(host: str, port: int, rule: Policy | None = None) -> list[tuple]:
    """getaddrinfo for `host`, keeping only the addresses the rule lets us connect to. Raises
    BlockedAddress when it resolved only to refused ones, OSError when it did not resolve."""
    rule = rule or policy()
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    allowed = [info for info in infos if rule.address_allowed(host, info[4][0])]
    if not allowed:
        raise _blocked(host, infos[0][4][0])
    return allowed


def connect(host: str, port: int, timeout: float | None = None, source_address=None) -> socket.socket:
    """socket.create_connection, dialling only the addresses `resolve` lets through."""
    error: OSError | None = None
    for family, kind, proto, _, address in resolve(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"could not connect to {host}")


def check_url(url: str) -> str | None:
    """For a form: why Lab Manager would not send to `url`, or None. Resolves the host now; the
    transport checks again on every connection. A name that does not resolve passes here (it may
    be set up later; the delivery will say so)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        return "Enter a full address, such as https://lab.example.com/api."
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "The port in this address is not a number."
    try:
        resolve(host, port)
    except BlockedAddress as exc:
        return str(exc)
    except (OSError, UnicodeError):
        return None
    return None


class SMTP(smtplib.SMTP):
    """smtplib's client, dialling only an address `resolve` lets through (STARTTLS still checks
    the certificate against the host's name)."""

    def _get_socket(self, host, port, timeout):
        if timeout is not None and not timeout:
            raise ValueError("Non-blocking socket (timeout=0) is not supported")
        return connect(host, port, timeout, self.source_address)


class _GuardedBackend(httpcore.SyncBackend):
    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        with httpcore._exceptions.map_exceptions({socket.timeout: httpcore.ConnectTimeout,
                                                  socket.gaierror: httpcore.ConnectError,
                                                  OSError: httpcore.ConnectError}):
            sock = connect(host, port, timeout, (local_address, 0) if local_address else None)
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return httpcore._backends.sync.SyncStream(sock)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport, with a network backend that resolves and checks each address it dials."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits = httpx.Limits()):
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=_GuardedBackend())


# -- the client ----------------------------------------------------------------------------------------

def tls_context() -> ssl.SSLContext:
    """Made once (loading the CA bundle costs ~20 ms) and inherited by forked work horses."""
    global _tls
    if _tls is None:
        _tls = httpx.create_ssl_context()
    return _tls


def client() -> httpx.Client:
    """The process's client: connections are kept alive and reused by its calls."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), httpx.Client(transport=GuardedTransport(tls_context()), follow_redirects=False,
                                             trust_env=False, headers={"User-Agent": USER_AGENT}))
    return _client[1]


def preload() -> None:
    """For a worker about to fork work horses (jobs/worker.py): what every horse's client needs,
    made once, with no connection opened."""
    tls_context()
    httpx.Client(transport=GuardedTransport(tls_context())).close()  # imports httpcore's transport


def close_client() -> None:
    global _client
    if _client is not None:
        _client[1].close()
        _client = None


def request(method: str, url: str, *, who: str, timeout: float | httpx.Timeout, **kwargs) -> httpx.Response:
    """One request through the process's client. Returns the response whatever its status;
    raises OutboundError "transient" when `who` could not be reached, "blocked" when the address
    is refused (nothing was sent)."""
    if not isinstance(timeout, httpx.Timeout):
        timeout = httpx.Timeout(timeout)
    try:
        return client().request(method, url, timeout=timeout, **kwargs)
    except BlockedAddress:
        raise
    except httpx.TransportError as exc:  # connect/read/write timeouts, refused, reset, DNS
        raise OutboundError(f"Could not reach {who}: {exc.__class__.__name__} {exc}".strip(), "transient") from exc


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (`Retry-After`: seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
