"""An email lab in a real Chromium: the link from the captured work-order email, acknowledge,
dispatch with tracking; the coordinator's board (another browser, signed in) follows within 5 s."""
from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from jobs import mail as mail_job
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from tests.ack.conftest import send_to_email_lab
from tests.browser.conftest import log_in, watch_for_script_errors

pytestmark = pytest.mark.browser


def card(page, number: str, status: str):
    return page.locator(f'section.column[data-status="{status}"] li.card[data-case-number="{number}"]')


def test_lab_acknowledges_and_dispatches_from_the_emailed_link(browser, live_server, app, world, db, monkeypatch):
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", live_server.url)  # the link points at the live server
    sent = send_to_email_lab(world, due=dt.date.today() + dt.timedelta(days=9))
    assert mail_job.send(sent.mail.id) == "sent"  # captured in the dev mailbox
    number, case_id = sent.case.number, sent.case.id

    office = browser.new_context(viewport={"width": 1600, "height": 1000})
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        board, lab = office.new_page(), phone.new_page()
        errors = [watch_for_script_errors(board), watch_for_script_errors(lab)]
        log_in(board, live_server, world.users["coordinator"], "/dev/mailbox/")
        board.get_by_role("link", name=sent.mail.subject).click()
        link = board.locator("#mail-text a").first
        href = link.get_attribute("href")
        assert urlsplit(href).path == f"/lab/{sent.token}"

        board.goto(live_server("/"))
        expect(card(board, number, "sent")).to_be_visible()

        # The lab, on its phone, without an account.
        lab.goto(href)
        expect(lab.get_by_role("heading", name=number)).to_be_visible()
        expect(lab.locator(".lab-top")).to_contain_text(world.labs["email"].name)
        lab.get_by_role("button", name="Acknowledge").click()
        expect(lab.locator(".lab-flash.success")).to_contain_text("Acknowledged")
        expect(card(board, number, "acknowledged")).to_be_visible(timeout=5000)

        lab.locator("summary", has_text="Dispatched").click()
        lab.get_by_label("Carrier").fill("UPS")
        lab.get_by_role("button", name="Mark dispatched").click()  # tracking missing: refused beside the field
        expect(lab.locator("#tracking_number-error")).to_be_visible()
        lab.get_by_label("Tracking number").fill("1Z999AA10123456784")
        lab.get_by_label("Expected delivery").fill((dt.date.today() + dt.timedelta(days=2)).isoformat())
        lab.get_by_role("button", name="Mark dispatched").click()
        expect(lab.locator(".lab-flash.success")).to_contain_text("Dispatched")
        expect(lab.locator(".lab-facts")).to_contain_text("1Z999AA10123456784")

        expect(card(board, number, "dispatched")).to_be_visible(timeout=5000)
        assert errors == [[], []]
    finally:
        office.close()
        phone.close()

    db.session.rollback()
    case = db.session.get(LabCase, case_id)
    assert case.status is Status.DISPATCHED and case.tracking_number == "1Z999AA10123456784"
    actions = db.session.scalars(select(AuditEvent.action).where(
        AuditEvent.entity_id == str(case_id), AuditEvent.actor_type == "lab").order_by(AuditEvent.seq)).all()
    assert actions == ["case.acknowledge", "case.dispatch"]
    # docs/reliability.md M3 against the real server's request log.
    assert sent.token not in live_server.output()
    assert "/lab/[redacted]" in live_server.output()
