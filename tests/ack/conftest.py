"""A case sent to an email lab, with its private link taken from the captured work-order email."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from portal.ack.models import AckLink
from portal.ack.services import prepare_email_dispatch
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.dispatch.models import Dispatch, DispatchState
from portal.extensions import db as _db
from portal.labs.models import Channel
from portal.mail.models import MailMessage
from tests import factories

LINK = re.compile(r"/lab/([A-Za-z0-9_-]{43})")
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"')


@dataclass
class Sent:
    case: object
    link: AckLink
    token: str
    mail: MailMessage

    @property
    def url(self) -> str:
        return f"/lab/{self.token}"


def send_to_email_lab(world, case=None, status: Status = Status.SENT, **kw) -> Sent:
    """Move a case to the lab and run the email half of "Approve and send" on it."""
    case = case or factories.case(world, status, lab=world.labs["email"], **kw)
    dispatch = Dispatch(case_id=case.id, lab_id=case.lab_id, practice_id=case.practice_id, channel=Channel.EMAIL,
                        state=DispatchState.DELIVERED, webhook_id=f"msg_test{case.id}_{_count(Dispatch)}")
    _db.session.add(dispatch)
    _db.session.flush()
    link = prepare_email_dispatch(dispatch)
    _db.session.commit()
    mail = _db.session.scalars(select(MailMessage).where(MailMessage.case_id == case.id)
                               .order_by(MailMessage.id.desc())).first()
    token = LINK.search(mail.text_body).group(1)
    return Sent(case=case, link=link, token=token, mail=mail)


def _count(model) -> int:
    return _db.session.scalar(select(func.count()).select_from(model))


def audit_count() -> int:
    return _count(AuditEvent)


def csrf_from(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1) or match.group(2)


@pytest.fixture()
def sent(world):
    return send_to_email_lab(world)


@pytest.fixture()
def lab_post(client):
    """POST a form from the lab's page the way a browser does: GET the page, take its CSRF token."""

    def _post(sent_: Sent, path: str, data: dict, **kwargs):
        page = client.get(sent_.url)
        token = csrf_from(page.get_data(as_text=True))
        client._fresh_g()
        return client.raw.post(f"{sent_.url}{path}", data={"csrf_token": token, **data}, **kwargs)

    return _post
