"""Messages between the practice and the lab, the unread count, and email updates to labs."""
from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select

from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.extensions import db as _db
from portal.mail.models import MailMessage
from portal.messages.models import LabMessage
from portal.messages.services import unread_count
from tests import factories
from tests.ack.conftest import audit_count

BADGE = re.compile(r'id="unread-lab-messages"[^>]*>Messages <span class="count">(\d+)</span>')


def _badge(client) -> tuple[int, bool]:
    html = client.get("/").get_data(as_text=True)
    match = BADGE.search(html)
    assert match, "no unread badge in the top bar"
    tag = html[html.index('id="unread-lab-messages"') - 20: match.end()]
    return int(match.group(1)), " hidden" in tag


def test_lab_writes_a_message_from_its_page(client, sent, lab_post):
    response = lab_post(sent, "/message", {"text": "Shade photo please <b>soon</b>"})
    assert response.status_code == 303
    message = _db.session.scalars(select(LabMessage)).one()
    assert (message.direction, message.case_id, message.author) == ("in", sent.case.id, sent.case.lab.name)
    assert message.read_at is None
    event = _db.session.scalars(select(AuditEvent).where(AuditEvent.action == "case.lab_message")).one()
    assert event.actor_type == "lab" and event.source == f"lab-link:{sent.link.id}"
    page = client.get(sent.url).get_data(as_text=True)
    assert "Shade photo please &lt;b&gt;soon&lt;/b&gt;" in page


def test_empty_message_is_422_and_writes_nothing(sent, lab_post):
    before = audit_count()
    response = lab_post(sent, "/message", {"text": "   "})
    assert response.status_code == 422 and "Write a message first" in response.get_data(as_text=True)
    assert audit_count() == before and not _db.session.scalars(select(LabMessage)).all()


def test_unread_count_in_the_top_bar_and_read_on_opening_the_case(client, login, sent, lab_post):
    lab_post(sent, "/message", {"text": "Margin on 11 unclear"})
    lab_post(sent, "/message", {"text": "Call us"})
    login()
    assert _badge(client) == (2, False)
    page = client.get(f"/cases/{sent.case.id}").get_data(as_text=True)
    assert "Margin on 11 unclear" in page and "2 new" in page
    # The case page asks to mark them read once it has shown them (a POST, never the GET itself).
    read_url = f"/cases/{sent.case.id}/messages/read"
    assert f'hx-post="{read_url}" hx-trigger="load"' in page
    assert unread_count(sent.case.practice_id) == 2
    response = client.post(read_url, htmx=True)
    assert response.status_code == 200 and 'hx-swap-oob="outerHTML"' in response.get_data(as_text=True)
    assert unread_count(sent.case.practice_id) == 0
    assert _badge(client) == (0, True)
    assert "hx-trigger=\"load\"" not in client.get(f"/cases/{sent.case.id}").get_data(as_text=True)


def test_unread_count_is_per_practice(client, login, world, sent, lab_post):
    lab_post(sent, "/message", {"text": "hello"})
    login("outsider")
    assert _badge(client) == (0, True)
    assert client.get(f"/cases/{sent.case.id}").status_code == 404
    assert client.post(f"/cases/{sent.case.id}/messages/read").status_code == 404


def test_inbox_lists_unread_messages(client, login, sent, lab_post):
    lab_post(sent, "/message", {"text": "Need a bite scan"})
    login("manager")
    body = client.get("/messages").get_data(as_text=True)
    assert "Need a bite scan" in body and sent.case.number in body


def test_practice_writes_to_an_email_lab(client, login, sent):
    login()
    response = client.post(f"/cases/{sent.case.id}/messages", {"text": "Please use A3 instead"},
                           htmx="lab-messages")
    assert response.status_code == 200
    assert "Please use A3 instead" in response.get_data(as_text=True)
    message = _db.session.scalars(select(LabMessage)).one()
    assert message.direction == "out" and message.author == "coordinator@test.test"
    mail = _db.session.scalars(select(MailMessage).where(MailMessage.kind == "message")).one()
    assert mail.to_addrs == sent.case.lab.email and "Please use A3 instead" in mail.text_body
    assert "/lab/" not in mail.text_body  # updates point to the work-order email's link, never carry one
    # The lab sees it on its page.
    assert "Please use A3 instead" in client.get(sent.url).get_data(as_text=True)


def test_practice_message_validation_and_roles(client, login, sent):
    login()
    empty = client.post(f"/cases/{sent.case.id}/messages", {"text": " "}, htmx="lab-messages")
    assert empty.status_code == 422 and 'id="message-text-error"' in empty.get_data(as_text=True)
    plain = client.post(f"/cases/{sent.case.id}/messages", {"text": " "})
    assert plain.status_code == 303
    login("manager")  # reads, does not change
    assert client.post(f"/cases/{sent.case.id}/messages", {"text": "hi"}).status_code == 403
    assert not _db.session.scalars(select(LabMessage)).all()


def test_messages_to_api_and_manual_labs_are_kept_not_mailed(client, login, world):
    login()
    for channel in ("api", "manual"):
        case = factories.case(world, Status.SENT, lab=world.labs[channel])
        assert client.post(f"/cases/{case.id}/messages", {"text": f"note for {channel}"}).status_code == 303
    assert len(_db.session.scalars(select(LabMessage)).all()) == 2
    assert not _db.session.scalars(select(MailMessage)).all()


def test_due_date_change_emails_the_lab(client, login, world, sent):
    from portal.audit.actor import Actor
    from portal.cases.services import CaseData, ItemData, update_case

    case = sent.case
    new_due = (case.due_date or dt.date.today()) + dt.timedelta(days=7)
    data = CaseData(patient_id=case.patient_id, provider_id=case.provider_id, lab_id=case.lab_id,
                    due_date=new_due, items=[ItemData(teeth=["11"], restoration="crown", material="zirconia",
                                                      shade="A2", margin="chamfer")])
    update_case(case, data, Actor.user(world.users["coordinator"]))
    _db.session.commit()
    mail = _db.session.scalars(select(MailMessage).where(MailMessage.kind == "due_date")).one()
    assert new_due.strftime("%d %b %Y") in mail.text_body and case.number in mail.subject
    # Nothing to tell when the due date stays, or when the lab has never been sent the case.
    update_case(case, data, Actor.user(world.users["coordinator"]))
    draft = factories.case(world, Status.DRAFT, lab=world.labs["email"])
    data.patient_id = draft.patient_id
    update_case(draft, data, Actor.user(world.users["coordinator"]))
    _db.session.commit()
    assert len(_db.session.scalars(select(MailMessage).where(MailMessage.kind == "due_date")).all()) == 1


def test_prescription_change_emails_the_lab_the_new_prescription(client, login, world, sent):
    from portal.audit.actor import Actor
    from portal.cases.services import CaseData, ItemData, update_case

    case = sent.case
    items = [ItemData(teeth=["11", "21"], restoration="bridge", material="zirconia", shade="B1", margin="chamfer",
                      notes="<b>pontic</b> ovate")]
    data = CaseData(patient_id=case.patient_id, provider_id=case.provider_id, lab_id=case.lab_id,
                    due_date=case.due_date, instructions="Check the bite", items=items)
    update_case(case, data, Actor.user(world.users["coordinator"]))
    _db.session.commit()
    mail = _db.session.scalars(select(MailMessage).where(MailMessage.kind == "prescription")).one()
    assert mail.subject.startswith(f"Prescription changed: {case.number}") and case.lab.email in mail.to_addrs
    assert "changed the prescription" in mail.text_body and "bridge, zirconia, shade B1" in mail.text_body
    assert "Instructions: Check the bite" in mail.text_body
    assert "&lt;b&gt;pontic&lt;/b&gt;" in mail.html_body and "<b>pontic" not in mail.html_body
    # The same prescription again tells the lab nothing.
    update_case(case, data, Actor.user(world.users["coordinator"]))
    _db.session.commit()
    assert len(_db.session.scalars(select(MailMessage).where(MailMessage.kind == "prescription")).all()) == 1


def test_resend_link_from_the_case_page(client, login, sent):
    login()
    page = client.get(f"/cases/{sent.case.id}").get_data(as_text=True)
    assert "Send the lab a new link" in page and "works until" in page
    response = client.post(f"/cases/{sent.case.id}/lab-link")
    assert response.status_code == 303
    assert client.get(sent.url).status_code == 410
    mail = _db.session.scalars(select(MailMessage).where(MailMessage.kind == "new_link")).one()
    token = re.search(r"/lab/([A-Za-z0-9_-]{43})", mail.text_body).group(1)
    assert client.get(f"/lab/{token}").status_code == 200
