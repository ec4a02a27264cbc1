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


def _counter(name: str):
    from portal.cases.models import Counter
    from portal.extensions import db

    db.session.expire_all()
    return db.session.get(Counter, name)


def test_transaction_commits_what_the_block_did(db):
    from portal.cases.models import Counter
    from portal.extensions import transaction

    with transaction(ValueError) as outcome:
        db.session.add(Counter(name="kept", value=1))
    assert outcome.refused is None
    db.session.rollback()  # nothing left to roll back: it was committed
    assert _counter("kept").value == 1


def test_transaction_rolls_back_a_refusal_and_keeps_it_for_the_view(db):
    from portal.cases.models import Counter
    from portal.errors import UserError
    from portal.extensions import transaction

    with transaction(UserError) as outcome:
        db.session.add(Counter(name="refused", value=1))
        db.session.flush()
        raise UserError("Choose a lab.", field="lab_id")
    assert isinstance(outcome.refused, UserError) and outcome.refused.field == "lab_id"
    assert _counter("refused") is None


def test_transaction_rolls_back_anything_else_and_lets_it_through(db):
    from portal.cases.models import Counter
    from portal.extensions import transaction

    with pytest.raises(KeyError), transaction(ValueError):
        db.session.add(Counter(name="broken", value=1))
        db.session.flush()
        raise KeyError("bug")
    assert _counter("broken") is None
