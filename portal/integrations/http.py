"""Outbound HTTP to scanner and PMS vendors: the vendor's host allow-list, then the request
through the one outbound client (portal/outbound.py: explicit timeouts, and outside development
no internal address), and the vendor's answer sorted into what the caller must do.

    response = vendor_http.call("GET", url, token=..., allowed_hosts=...)

2xx returns the response. Anything else raises a VendorError whose `kind` says what it means:
"auth" (401: refresh once, then the integration needs reconnecting), "not_found" (404),
"transient" (network, 408, 429 with `retry_after`, 5xx: try later), "refused" (other 4xx:
trying again will not help), "host" (a URL outside the allow-list, or at an address Lab Manager
does not connect to: nothing was sent).
"""
from __future__ import annotations

from urllib.parse import urlsplit

import httpx
from flask import current_app

from portal import outbound
from portal.nul import without_nul

# The one error type of outbound calls; str(exc) is fit for the integration's "last error".
VendorError = outbound.OutboundError


def allowed_hosts() -> list[str]:
    return [h.strip().lower() for h in current_app.config["SCANNER_ALLOWED_HOSTS"].split(",") if h.strip()]


def check_host(url: str, hosts: list[str] | None = None) -> None:
    """Refuse a URL whose host is not on the allow-list (".example.com" allows its subdomains too),
    or that is not http(s). Raises VendorError(kind="host") before anything is sent (docs/reliability.md W8)."""
    hosts = allowed_hosts() if hosts is None else hosts
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    ok = parts.scheme in ("https", "http") and host and any(
        host == h or (h.startswith(".") and (host.endswith(h) or host == h[1:])) for h in hosts)
    if not ok:
        raise VendorError(f"The vendor pointed us at {parts.scheme}://{host or '?'}, which is not on the "
                          "allowed hosts (SCANNER_ALLOWED_HOSTS); nothing was sent there.", "host")


def timeout() -> httpx.Timeout:
    return httpx.Timeout(float(current_app.config["SCANNER_HTTP_TIMEOUT"]))


def call(method: str, url: str, *, vendor: str, token: str | None = None, headers: dict | None = None,
         **kwargs) -> httpx.Response:
    """One request to a vendor: allow-list first, then the call, then the answer sorted."""
    check_host(url)
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    response = outbound.request(method, url, who=vendor, headers=all_headers, timeout=timeout(), **kwargs)
    code = response.status_code
    if 200 <= code < 300:
        return response
    detail = _detail(response)
    if code == 401:
        raise VendorError(f"{vendor} refused our credentials (HTTP 401){detail}", "auth", code)
    if code == 404:
        raise VendorError(f"{vendor} does not know it (HTTP 404){detail}", "not_found", code)
    if code in (408, 425, 429) or code >= 500:
        raise VendorError(f"{vendor} answered HTTP {code}{detail}; we will try again", "transient", code,
                          retry_after=outbound.retry_after(response))
    raise VendorError(f"{vendor} refused the request (HTTP {code}){detail}", "refused", code)


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error_description", "message", "error"):
            if isinstance(data.get(key), str) and data[key].strip():
                return ": " + data[key].strip()[:160]
    text = response.text.strip().replace("\n", " ")[:160]
    return f": {text}" if text else ""


def parsed(response: httpx.Response):
    """The response's JSON (ValueError when it is not JSON), with every NUL character taken out of
    its strings (portal/nul.py: PostgreSQL could not store the row, and the whole sync would fail)."""
    data = response.json()
    body = response.content  # searched as bytes: no second decode of every answer
    if b"\\u0000" in body or b"\x00" in body:
        data = without_nul(data)
    return data


def json_body(response: httpx.Response, vendor: str) -> dict:
    """The response's JSON object, or VendorError(kind="refused") saying the vendor sent something else."""
    try:
        data = parsed(response)
    except ValueError:
        raise VendorError(f"{vendor} sent an answer that is not JSON.", "refused", response.status_code) from None
    if not isinstance(data, dict):
        raise VendorError(f"{vendor} sent JSON of an unexpected shape.", "refused", response.status_code)
    return data
