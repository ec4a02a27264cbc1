"""An email lab's dispatch follows its work-order email: delivered when it is sent, failed (and
shown on the board with Retry) when it fails for good; Retry mails a new link."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from jobs import mail as mail_job
from portal.audit.actor import Actor
from portal.cases.lifecycle import Status
from portal.dispatch.models import Dispatch, DispatchState
from portal.dispatch.services import approve_and_send
from portal.extensions import db
from portal.mail.models import MailMessage
from portal.mail.services import PermanentMailError
from tests import factories


def _send_to_email_lab(world):
    case = factories.case(world, Status.DRAFT, lab=world.labs["email"])
    dispatch = approve_and_send(case, Actor.user(world.users["coordinator"]), confirm_risk=False)
    db.session.commit()
    return case, dispatch


def _mails(case):
    return db.session.scalars(select(MailMessage).where(MailMessage.case_id == case.id)
                              .order_by(MailMessage.id)).all()


def test_sent_work_order_marks_the_dispatch_delivered(app, world):
    case, dispatch = _send_to_email_lab(world)
    assert dispatch.state is DispatchState.PENDING
    (mail,) = _mails(case)
    assert mail_job.send(mail.id) == "sent"  # captured by the dev mailbox
    db.session.expire_all()
    assert db.session.get(Dispatch, dispatch.id).state is DispatchState.DELIVERED


def test_failed_work_order_shows_on_the_board_and_retry_sends_a_new_link(app, world, client, login, monkeypatch):
    case, dispatch = _send_to_email_lab(world)
    (mail,) = _mails(case)
    monkeypatch.setitem(app.config, "MAIL_BACKEND", "carrier-pigeon")
    with pytest.raises(PermanentMailError):
        mail_job.send(mail.id)
    db.session.expire_all()
    assert db.session.get(Dispatch, dispatch.id).state is DispatchState.FAILED
    assert "email to the lab failed" in db.session.get(type(case), case.id).dispatch_error

    login()
    board = client.get("/").get_data(as_text=True)
    card = board.split(f'data-case-number="{case.number}"', 1)[1].split("</li>", 1)[0]
    assert "Dispatch failed" in card and "Retry" in card

    monkeypatch.setitem(app.config, "MAIL_BACKEND", "devmailbox")
    response = client.post(f"/cases/{case.id}/dispatch/retry", {"next": "/"})
    assert response.status_code in (302, 303)
    db.session.expire_all()
    assert db.session.get(Dispatch, dispatch.id).state is DispatchState.PENDING
    assert db.session.get(type(case), case.id).dispatch_error == ""
    first, second = _mails(case)
    assert second.kind == "new_link" and second.state == "pending"
    assert mail_job.send(second.id) == "sent"
    db.session.expire_all()
    assert db.session.get(Dispatch, dispatch.id).state is DispatchState.DELIVERED
