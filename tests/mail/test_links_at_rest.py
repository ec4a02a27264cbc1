"""docs/reliability.md M1 in the outbox: a private link's token is stored only as a hash, so the mail
that carries it keeps no usable token at rest. The raw rows hold a placeholder in the bodies and
the token encrypted (SCANNER_CREDENTIALS_KEYS) until the mail is delivered or failed for good,
and nothing at all afterwards; what the SMTP server receives has the working link."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from portal.extensions import db
from portal.mail import delivery
from portal.mail.models import PLACEHOLDER, SCRUBBED
from portal.mail.services import PermanentMailError
from tests.ack.conftest import send_to_email_lab

LINK = re.compile(r"/lab/([A-Za-z0-9_-]{43})")


def _raw(mail_id: int) -> dict:
    """The row as the database holds it (no ORM, no decryption)."""
    row = db.session.execute(text("SELECT * FROM mail_message WHERE id = :id"), {"id": mail_id}).mappings().one()
    return dict(row)


def _everything(row: dict) -> str:
    return " ".join(str(v) for v in row.values())


def test_a_work_order_email_keeps_no_usable_token_at_rest(client, world, smtp_server, use_smtp, mail_queue):
    use_smtp(smtp_server.port)
    sent = send_to_email_lab(world)
    token = sent.token
    waiting = _raw(sent.mail.id)
    assert waiting["state"] == "pending"
    assert token not in _everything(waiting)  # not even while it waits for the SMTP server
    assert PLACEHOLDER in waiting["text_body"] and PLACEHOLDER in waiting["html_body"]
    assert waiting["link_secret"].startswith("gAAAA")

    assert delivery.send(sent.mail.id) == "sent"
    [(_, _, message)] = smtp_server.inbox.messages
    delivered = message.get_body(("plain",)).get_content()
    assert LINK.search(delivered).group(1) == token  # the lab got the working link
    assert f"/lab/{token}" in message.get_body(("html",)).get_content()
    assert PLACEHOLDER not in delivered

    kept = _raw(sent.mail.id)
    assert kept["state"] == "sent" and kept["link_secret"] is None
    assert token not in _everything(kept) and PLACEHOLDER not in _everything(kept)
    assert SCRUBBED in kept["text_body"]
    assert client.get(f"/lab/{token}").status_code == 200  # the link itself still works


def test_a_set_password_email_keeps_no_usable_token_at_rest(client, login, world, smtp_server, use_smtp, mail_queue):
    login("admin")
    use_smtp(smtp_server.port)
    assert client.post("/admin/users/", {"name": "Nadia", "email": "nadia@test.test", "role": "manager"}).status_code == 303
    mail_id = db.session.execute(text("SELECT max(id) FROM mail_message")).scalar()
    assert delivery.send(mail_id) == "sent"
    [(_, _, message)] = smtp_server.inbox.messages
    token = re.search(r"/set-password/([A-Za-z0-9_-]{43})", message.get_body(("plain",)).get_content()).group(1)
    kept = _raw(mail_id)
    assert token not in _everything(kept) and kept["link_secret"] is None
    assert client.get(f"/set-password/{token}").status_code == 200


def test_a_mail_that_failed_for_good_drops_its_token(app, world, mail_queue, monkeypatch):
    sent = send_to_email_lab(world)
    monkeypatch.setitem(app.config, "MAIL_BACKEND", "carrier-pigeon")  # refused for good
    with pytest.raises(PermanentMailError):
        delivery.send(sent.mail.id)
    kept = _raw(sent.mail.id)
    assert kept["state"] == "failed" and kept["link_secret"] is None
    assert sent.token not in _everything(kept)


def test_the_dev_mailbox_shows_the_working_link(client, login, world):
    sent = send_to_email_lab(world)
    assert delivery.send(sent.mail.id) == "sent"  # captured, not delivered: the dev mailbox is the inbox
    login("coordinator")
    page = client.get(f"/dev/mailbox/{sent.mail.id}").get_data(as_text=True)
    assert f"/lab/{sent.token}" in page
    assert sent.token not in _everything(_raw(sent.mail.id))
