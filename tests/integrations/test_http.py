"""Vendor URLs are checked against the allow-list before anything is sent (docs/reliability.md W8)."""
from __future__ import annotations

import pytest

from portal.integrations.http import VendorError, check_host

HOSTS = [".itero.com", "openapi-auth.meditlink.com", "127.0.0.1"]


@pytest.mark.parametrize("url", [
    "https://api.itero.com/v2/orders", "https://itero.com/x", "https://openapi-auth.meditlink.com/oauth/token",
    "http://127.0.0.1:5056/itero/discovery",
])
def test_allowed_hosts_pass(url):
    check_host(url, HOSTS)


@pytest.mark.parametrize("url", [
    "https://evil.example/itero.com", "https://notitero.com/x", "https://api.itero.com.evil.example/x",
    "https://openapi-resources.meditlink.com/v1/me", "ftp://api.itero.com/x", "file:///etc/passwd",
    "https://user@evil.example/", "http://127.0.0.2/", "//api.itero.com/x",
])
def test_other_hosts_are_refused_before_any_call(url):
    with pytest.raises(VendorError, match="not on the allowed hosts") as info:
        check_host(url, HOSTS)
    assert info.value.kind == "host"
