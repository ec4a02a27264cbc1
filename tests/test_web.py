"""portal/web.py's helpers that every blueprint relies on."""
from __future__ import annotations

import pytest

from portal.web import safe_next
from tests import factories


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/x", "/\\evil.example", "\\\\evil.example", "/ok\\..\\x",
    "javascript:alert(1)", "evil.example", "", None,
])
def test_safe_next_refuses_anything_but_a_path_on_this_site(target):
    assert safe_next(target, "/fallback") == "/fallback"


@pytest.mark.parametrize("target", ["/", "/cases/12", "/scans?tab=pending", "/cases/3#lab-messages"])
def test_safe_next_keeps_a_path_on_this_site(target):
    assert safe_next(target, "/fallback") == target


def test_sign_in_never_follows_a_backslash_to_another_host(client, world):
    """Browsers read `/\\host` as `//host`: the sign-in's `next` must not send anyone there."""
    response = client.post("/login?next=/%5Cevil.example", {"email": world.users["coordinator"].email,
                                                             "password": factories.PASSWORD})
    assert response.status_code == 302 and response.headers["Location"] == "/"
