"""Outbound calls (portal/outbound.py): outside development no request reaches a loopback,
private, link-local or otherwise non-public address unless its host is allowed on purpose, and
the check is made on the address connected to. Real servers on loopback count what reaches them."""
from __future__ import annotations

import socket
import threading

import httpx
import pytest

from portal import outbound


class Listener:
    """A TCP server that counts the connections it accepts and answers each with a 200."""

    def __init__(self, family=socket.AF_INET, host="127.0.0.1"):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture()
def v4():
    server = Listener()
    yield server
    server.close()


@pytest.fixture()
def v6():
    server = Listener(socket.AF_INET6, "::1")
    yield server
    server.close()


@pytest.fixture()
def production(app, monkeypatch):
    """The address rule as it is outside development (LM_ENV=production)."""
    outbound.close_client()  # no connection kept alive from an earlier test
    monkeypatch.setitem(app.config, "DEVELOPMENT", False)
    monkeypatch.setitem(app.config, "OUTBOUND_ALLOWED_HOSTS", "")
    with app.app_context():
        yield app.config
    outbound.close_client()


def _get(url: str) -> httpx.Response:
    return outbound.request("GET", url, who="the test server", timeout=3)


def test_development_reaches_loopback(app, v4, v6):
    with app.app_context():
        assert _get(f"http://127.0.0.1:{v4.port}/").status_code == 200
        assert _get(f"http://[::1]:{v6.port}/").status_code == 200
    assert v4.accepted == 1 and v6.accepted == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.1.2.3", "[::ffff:127.0.0.1]"])
def test_production_refuses_loopback_without_sending_anything(production, v4, host):
    with pytest.raises(outbound.BlockedAddress) as caught:
        _get(f"http://{host}:{v4.port}/latest/meta-data")
    assert "loopback" in str(caught.value) and "OUTBOUND_ALLOWED_HOSTS" in str(caught.value)
    assert caught.value.kind == "host" and not caught.value.transient
    assert v4.accepted == 0


def test_production_refuses_ipv6_loopback(production, v6):
    with pytest.raises(outbound.BlockedAddress):
        _get(f"http://[::1]:{v6.port}/")
    assert v6.accepted == 0


@pytest.mark.parametrize("url, kind", [
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://10.0.0.1/", "private"),
    ("https://192.168.1.10/", "private"),
    ("https://[fd00::1]/", "private"),
    ("https://[fe80::1]/", "link-local"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://224.0.0.1/", "multicast"),
    ("https://100.64.0.1/", "non-public"),
    ("https://[::ffff:10.0.0.1]/", "private"),
])
def test_production_refuses_private_link_local_and_reserved_addresses(production, url, kind):
    # Refused before any connection is tried: nothing listens there, and no timeout is waited for.
    with pytest.raises(outbound.BlockedAddress) as caught:
        _get(url)
    assert kind in str(caught.value)


def test_the_allow_list_lets_a_named_host_through(production, v4):
    production["OUTBOUND_ALLOWED_HOSTS"] = "lab.internal, localhost"
    assert _get(f"http://localhost:{v4.port}/").status_code == 200
    assert v4.accepted == 1
    with pytest.raises(outbound.BlockedAddress):  # another name for the same address is not on it
        _get(f"http://127.0.0.1:{v4.port}/")
    production["OUTBOUND_ALLOWED_HOSTS"] = "127.0.0.0/8"  # a network
    assert _get(f"http://127.0.0.1:{v4.port}/").status_code == 200
    assert v4.accepted == 2


def test_the_check_is_made_on_the_address_connected_to(production, v4, monkeypatch):
    """DNS rebinding: the name resolves to a public address when the form is checked and to
    loopback when the request is made; the request is refused and nothing reaches loopback."""
    real = socket.getaddrinfo
    answers = iter(["93.184.216.34", "127.0.0.1"])

    def rebinding(host, port, *args, **kwargs):
        if host == "lab.rebind.test":
            address = next(answers)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    assert outbound.check_url(f"https://lab.rebind.test:{v4.port}/api") is None  # looks public now
    with pytest.raises(outbound.BlockedAddress):
        _get(f"http://lab.rebind.test:{v4.port}/orders")
    assert v4.accepted == 0


def test_a_name_resolving_to_public_and_private_addresses_is_only_dialled_on_the_public_one(production):
    rule = outbound.Policy(guard=True)
    assert rule.address_allowed("lab.example.com", "93.184.216.34")
    assert not rule.address_allowed("lab.example.com", "10.1.2.3")
    assert not rule.address_allowed("lab.example.com", "::ffff:169.254.169.254")
    assert outbound.Policy(guard=True, allowed=(".practice.lan",)).address_allowed("pms.practice.lan", "10.1.2.3")
    assert outbound.Policy(guard=False).address_allowed("x", "127.0.0.1")


def test_scanner_and_pms_vendor_calls_go_through_the_same_rule(production, v4, monkeypatch):
    """The vendors' own host allow-list (SCANNER_ALLOWED_HOSTS) is not enough outside development:
    a vendor that points us at loopback is refused on the address, and nothing is sent."""
    from portal.integrations import http as vendor_http

    monkeypatch.setitem(production, "SCANNER_ALLOWED_HOSTS", "127.0.0.1")
    with pytest.raises(vendor_http.VendorError) as caught:
        vendor_http.call("GET", f"http://127.0.0.1:{v4.port}/oauth/token", vendor="iTero")
    assert caught.value.kind == "host" and "loopback" in str(caught.value)  # an integration stops on "host"
    assert v4.accepted == 0
    production["OUTBOUND_ALLOWED_HOSTS"] = "127.0.0.1"
    assert vendor_http.call("GET", f"http://127.0.0.1:{v4.port}/", vendor="iTero").status_code == 200
    assert v4.accepted == 1
