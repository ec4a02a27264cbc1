"""The coordinator's board in a real Chromium: drag and drop, the reason dialog, the keyboard menu,
live updates from another session, and the filters.

The data is made by the test (factories, committed) and read by a real server process
(`live_server`); after the browser acts, the test re-reads the database for the truth.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from tests import factories
from tests.browser.conftest import axe_violations, log_in, watch_for_script_errors

pytestmark = pytest.mark.browser


def card(page, number: str, status: str | None = None):
    column = f'section.column[data-status="{status}"] ' if status else ""
    return page.locator(f'{column}li.card[data-case-number="{number}"]')


def drop_zone(page, status: str):
    return page.locator(f'section.column[data-status="{status}"] ol.cards')


def drag(page, number: str, to_status: str) -> None:
    """Drag a card by hand, in small steps, the way SortableJS wants to see it: press on the card
    (away from its links and menu), leave the source column, hover the target list, release."""
    source = card(page, number)
    source.scroll_into_view_if_needed()
    box = source.locator(".items").bounding_box()
    target = drop_zone(page, to_status).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 8, y + 8, steps=4)
    tx, ty = target["x"] + target["width"] / 2, target["y"] + min(target["height"] / 2, 60)
    page.mouse.move(tx, ty, steps=12)
    page.mouse.move(tx + 2, ty + 2, steps=2)
    page.mouse.up()


def move_response(page):
    return page.expect_response(lambda r: r.request.method == "POST" and urlsplit(r.url).path.endswith("/move"))


def fresh(case_id: int) -> LabCase:
    from portal.extensions import db

    db.session.rollback()
    db.session.expire_all()
    return db.session.get(LabCase, case_id)


def make_case(world, status: Status, first: str = "Ada", last: str | None = None) -> tuple[int, str]:
    patient = factories.patient(world.practice, first=first, last=last)
    c = factories.case(world, status, patient_obj=patient)
    return c.id, c.number


def test_drag_sent_to_acknowledged_is_saved(page, signed_in, world, db):
    case_id, number = make_case(world, Status.SENT)
    signed_in(page, world.users["coordinator"])
    expect(card(page, number, "sent")).to_be_visible()

    with move_response(page) as response:
        drag(page, number, "acknowledged")
    assert response.value.status == 200
    expect(card(page, number, "acknowledged")).to_be_visible()
    expect(page.locator("#toasts .toast.success")).to_contain_text(f"{number} moved to Acknowledged")

    page.reload()
    expect(card(page, number, "acknowledged")).to_be_visible()
    expect(card(page, number, "sent")).to_have_count(0)
    assert fresh(case_id).status is Status.ACKNOWLEDGED
    audit = db.session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "lab_case", AuditEvent.entity_id == str(case_id),
        AuditEvent.action == "case.acknowledge")).all()
    assert len(audit) == 1
    assert audit[0].actor_id == str(world.users["coordinator"].id)


def test_illegal_drop_snaps_back_with_the_reason(page, signed_in, world, db):
    case_id, number = make_case(world, Status.DRAFT)
    signed_in(page, world.users["coordinator"])

    with move_response(page) as response:
        drag(page, number, "received")
    assert response.value.status == 409
    expect(card(page, number, "draft")).to_be_visible()
    expect(card(page, number, "received")).to_have_count(0)
    toast = page.locator("#toasts .toast.error")
    expect(toast).to_contain_text(f"{number} can't go from Draft to Received")
    toast.locator(".toast-close").click()
    expect(toast).to_have_count(0)
    assert fresh(case_id).status is Status.DRAFT


def test_drop_on_hold_asks_for_a_reason(page, signed_in, world, db):
    held_id, held = make_case(world, Status.SENT, last="Held")
    kept_id, kept = make_case(world, Status.SENT, last="Kept")
    signed_in(page, world.users["coordinator"])
    dialog = page.locator("#reason-dialog")

    drag(page, held, "on_hold")
    expect(dialog).to_be_visible()
    expect(page.locator("#reason-title")).to_have_text(f"Move {held} to On hold")
    expect(page.locator("#reason-input")).to_be_focused()
    page.fill("#reason-input", "Waiting for the shade photo")
    with move_response(page) as response:
        page.locator("#reason-input").press("Enter")
    assert response.value.status == 200
    expect(dialog).to_be_hidden()
    held_card = card(page, held, "on_hold")
    expect(held_card).to_be_visible()
    expect(held_card.locator(".badge.hold")).to_contain_text("Waiting for the shade")

    drag(page, kept, "on_hold")
    expect(dialog).to_be_visible()
    page.click("#reason-cancel")
    expect(dialog).to_be_hidden()
    expect(card(page, kept, "sent")).to_be_visible()
    expect(card(page, kept, "on_hold")).to_have_count(0)

    drag(page, kept, "on_hold")  # Escape cancels too
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(card(page, kept, "sent")).to_be_visible()

    assert fresh(held_id).status is Status.ON_HOLD
    assert fresh(held_id).status_reason == "Waiting for the shade photo"
    assert fresh(kept_id).status is Status.SENT


def test_status_menu_moves_a_card_from_the_keyboard(page, signed_in, world, db):
    case_id, number = make_case(world, Status.SENT)
    signed_in(page, world.users["coordinator"])
    menu = card(page, number).locator("details.card-menu")

    # An open menu holds the live poll, so it must be easy to close: Escape, or a click elsewhere.
    menu.locator("summary").click()
    expect(menu).to_have_attribute("open", "")
    page.locator("h2#col-draft").click()
    expect(menu).not_to_have_attribute("open", "")

    menu.locator("summary").focus()
    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("open", "")
    page.keyboard.press("Tab")
    page.keyboard.press("Escape")
    expect(menu).not_to_have_attribute("open", "")
    expect(menu.locator("summary")).to_be_focused()

    page.keyboard.press("Enter")
    expect(menu).to_have_attribute("open", "")
    # The menu's form loads when it opens and the keyboard lands on the status choice.
    select_box = menu.locator("select")
    expect(select_box).to_be_focused()
    select_box.select_option("acknowledged")
    menu.locator("button").focus()
    with move_response(page) as response:
        page.keyboard.press("Enter")
    assert response.value.status == 200
    moved = card(page, number, "acknowledged")
    expect(moved).to_be_visible()
    # Focus stays with the card the person just moved, not lost to the top of the page.
    expect(moved.locator("a.patient")).to_be_focused()
    assert fresh(case_id).status is Status.ACKNOWLEDGED


def test_a_move_elsewhere_shows_up_without_a_reload(browser, live_server, world, db):
    first_id, first = make_case(world, Status.SENT, last="Firstly")
    second_id, second = make_case(world, Status.SENT, last="Secondly")
    contexts = [browser.new_context(viewport={"width": 1600, "height": 1000}) for _ in range(2)]
    try:
        a, b = (ctx.new_page() for ctx in contexts)
        errors = [watch_for_script_errors(a), watch_for_script_errors(b)]

        log_in(a, live_server, world.users["coordinator"])
        log_in(b, live_server, world.users["manager"])
        b.evaluate("window.notReloaded = true")
        card(b, second).locator("a.patient").focus()

        with move_response(a):
            drag(a, first, "acknowledged")
        expect(card(b, first, "acknowledged")).to_be_visible(timeout=5000)
        # The poll replaced B's board; B's keyboard focus is still on the card it was on.
        expect(card(b, second, "sent").locator("a.patient")).to_be_focused()

        case = db.session.get(LabCase, second_id)
        lifecycle.move(case, Status.ACKNOWLEDGED, actor=Actor.lab(world.lab))
        db.session.commit()
        expect(card(b, second, "acknowledged")).to_be_visible(timeout=5000)
        expect(card(a, second, "acknowledged")).to_be_visible(timeout=5000)
        expect(card(b, second, "acknowledged").locator("a.patient")).to_be_focused()
        assert b.evaluate("window.notReloaded") is True
        assert errors == [[], []]
    finally:
        for ctx in contexts:
            ctx.close()


def test_search_narrows_the_board_and_keeps_the_url(page, signed_in, world, db):
    _, ada = make_case(world, Status.SENT, first="Ada", last="Quintero")
    _, grace = make_case(world, Status.DRAFT, first="Grace", last="Hopper")
    _, other = make_case(world, Status.SENT, first="Grace", last="Quimby")
    signed_in(page, world.users["coordinator"])
    page.evaluate("window.notReloaded = true")

    page.locator("#q").press_sequentially("Quint", delay=30)
    expect(card(page, grace)).to_have_count(0)
    expect(card(page, other)).to_have_count(0)
    expect(card(page, ada, "sent")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/\?q=Quint$"))  # no empty lab=&provider=&...
    assert page.evaluate("window.notReloaded") is True

    # A move made while filtered keeps the board filtered.
    with move_response(page):
        drag(page, ada, "acknowledged")
    expect(card(page, ada, "acknowledged")).to_be_visible()
    expect(card(page, grace)).to_have_count(0)

    page.select_option("#f-lab", str(world.labs["manual"].id))
    expect(card(page, ada)).to_have_count(0)
    expect(page).to_have_url(re.compile(r"lab=\d+"))

    page.go_back()
    expect(card(page, ada)).to_be_visible()
    page.goto(page.url.split("?")[0])
    expect(card(page, grace, "draft")).to_be_visible()


def test_the_board_has_a_heading_and_passes_axe(page, signed_in, world, db):
    make_case(world, Status.DRAFT)
    make_case(world, Status.ON_HOLD, last="Held")
    signed_in(page, world.users["coordinator"])
    expect(page.get_by_role("heading", level=1, name="Board")).to_be_attached()
    assert axe_violations(page) == []


def _inside(inner: dict, outer: dict) -> bool:
    return (inner["x"] >= outer["x"] - 0.5 and inner["y"] >= outer["y"] - 0.5
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 0.5)


@pytest.mark.parametrize("width", [1280, 1600])
def test_the_move_menu_of_the_first_column_opens_on_screen(browser, live_server, world, db, width):
    """The Draft column is the leftmost: its cards' Move menu opened leftwards, off the screen."""
    _, number = make_case(world, Status.DRAFT)
    ctx = browser.new_context(viewport={"width": width, "height": 800})
    try:
        page = ctx.new_page()
        errors = watch_for_script_errors(page)
        log_in(page, live_server, world.users["coordinator"])
        menu = card(page, number, "draft").locator("details.card-menu")
        menu.locator("summary").focus()
        page.keyboard.press("Enter")
        expect(menu.locator("select")).to_be_focused()
        body = menu.locator(".menu-body").bounding_box()
        board = page.locator("#board-columns").bounding_box()
        screen = {"x": 0, "y": 0, "width": width, "height": 800}
        assert _inside(body, screen) and _inside(body, board), (body, board)
        for control in ("select", "input[name=reason]", "button"):
            assert _inside(menu.locator(control).bounding_box(), screen)
        assert errors == []
    finally:
        ctx.close()


def test_tab_alone_reaches_every_control_of_the_board(page, signed_in, world, db):
    for status in (Status.DRAFT, Status.SENT, Status.ON_HOLD, Status.DISPATCHED):
        make_case(world, status)
    signed_in(page, world.users["coordinator"])
    expect(page.locator("li.card")).to_have_count(4)
    controls = page.evaluate("""() => {
        const all = [...document.querySelectorAll('a[href], button, input, select, textarea, summary')];
        all.forEach((el, n) => el.dataset.tabProbe = n);
        return all.filter((el) => el.checkVisibility({visibilityProperty: true}) && !el.disabled && !el.closest('dialog, [hidden]'))
                  .map((el) => el.dataset.tabProbe);
    }""")
    reached = set()
    for _ in range(len(controls) * 2 + 5):
        page.keyboard.press("Tab")
        probe = page.evaluate("document.activeElement && document.activeElement.dataset.tabProbe || null")
        if probe is not None:
            reached.add(probe)
        if reached >= set(controls):
            break
    missed = page.evaluate("(ids) => ids.map((n) => document.querySelector(`[data-tab-probe='${n}']`).outerHTML.slice(0, 120))",
                           sorted(set(controls) - reached))
    assert not missed, "Tab never reached:\n" + "\n".join(missed)


def test_both_search_boxes_find_the_same_and_say_when_nothing_matches(page, signed_in, world, db):
    """The top bar's box only knew case numbers: a name there went back to an unfiltered board."""
    _, ada = make_case(world, Status.SENT, first="Ada", last="Quintero")
    _, grace = make_case(world, Status.DRAFT, first="Grace", last="Hopper")
    closed_id, closed = make_case(world, Status.CANCELLED, first="Old", last="Cancelled")
    signed_in(page, world.users["coordinator"], "/risk")

    page.fill("#find-number", "quint")
    page.locator("#find-number").press("Enter")
    expect(card(page, ada, "sent")).to_be_visible()
    expect(card(page, grace)).to_have_count(0)
    expect(page.locator("#q")).to_have_value("quint")  # the board's box shows the same search

    page.fill("#find-number", "Nobody-here")
    page.locator("#find-number").press("Enter")
    expect(page.locator("li.card")).to_have_count(0)
    expect(page.locator(".no-match")).to_contain_text("No case on the board matches “Nobody-here”")

    page.locator("#q").fill("")
    page.locator("#q").press_sequentially("zzz", delay=30)  # the board's box says the same
    expect(page.locator(".no-match")).to_contain_text("No case on the board matches “zzz”")
    page.locator("#q").fill(closed)
    expect(page.locator(".no-match")).to_contain_text(f"{closed} is Cancelled")
    page.locator(".no-match a").click()
    expect(page).to_have_url(re.compile(rf"/cases/{closed_id}$"))

    page.fill("#find-number", grace.lower())  # a case number (a barcode) still opens the case
    page.locator("#find-number").press("Enter")
    expect(page.locator("h1")).to_contain_text(grace)


def test_bulk_move_of_selected_cards_refuses_the_illegal_one_and_keeps_it_selected(page, signed_in, world, db):
    a_id, a = make_case(world, Status.SENT, last="Alpha")
    b_id, b = make_case(world, Status.SENT, last="Bravo")
    d_id, d = make_case(world, Status.DRAFT, last="Delta")
    signed_in(page, world.users["coordinator"])
    bar = page.locator("#bulk")
    expect(bar).to_be_hidden()
    for number in (a, b, d):
        card(page, number).get_by_label(f"Select {number}").check()
    expect(bar).to_be_visible()
    expect(bar.locator("[data-bulk-count]")).to_have_text("3")

    page.wait_for_timeout(1200)  # a live poll swaps the board: the selection stays
    expect(card(page, a).get_by_label(f"Select {a}")).to_be_checked()
    bar.get_by_label("Column to move the selected cases to").select_option("acknowledged")
    with page.expect_response(lambda r: urlsplit(r.url).path == "/board/bulk") as response:
        bar.get_by_role("button", name="Move", exact=True).click()
    assert response.value.status == 200
    expect(card(page, a, "acknowledged")).to_be_visible()
    expect(card(page, b, "acknowledged")).to_be_visible()
    refused = card(page, d, "draft")
    expect(refused.locator(".refused-why")).to_contain_text("can't go from Draft to Acknowledged")
    expect(page.locator("#toasts .toast.error")).to_contain_text("2 cases moved to Acknowledged.")
    expect(refused.get_by_label(f"Select {d}")).to_be_checked()  # still selected, to act on again
    expect(bar.locator("[data-bulk-count]")).to_have_text("1")
    assert (fresh(a_id).status, fresh(b_id).status, fresh(d_id).status) == (
        Status.ACKNOWLEDGED, Status.ACKNOWLEDGED, Status.DRAFT)

    bar.get_by_role("button", name="Clear selection").click()
    expect(bar).to_be_hidden()
    expect(refused.get_by_label(f"Select {d}")).not_to_be_checked()
    page.screenshot(path="/tmp/ui/bulk_after.png")


def test_at_risk_advice_comes_with_the_buttons_that_do_it(page, signed_in, world, db):
    import datetime as dt

    today = dt.date.today()
    risky = factories.case(world, Status.SENT, seat=today + dt.timedelta(days=2), due=today + dt.timedelta(days=5))
    assert risky.seat_risk
    signed_in(page, world.users["coordinator"], "/risk")
    row = page.locator("tr", has_text=risky.number)
    expect(row.locator("td.why")).to_contain_text("Chase the lab or move the appointment")
    row.get_by_role("link", name=f"Message {world.lab.name}").click()
    expect(page).to_have_url(re.compile(rf"/cases/{risky.id}#message-text$"))
    expect(page.locator("#message-text")).to_be_in_viewport()
    page.go_back()
    page.locator("tr", has_text=risky.number).get_by_role("link", name="Open the seat appointment").click()
    expect(page).to_have_url(re.compile(rf"/appointments/{risky.seat_appointment_id}/edit$"))


def test_a_mistaken_drag_is_undone_from_its_toast(page, signed_in, world, db):
    case_id, number = make_case(world, Status.SENT)
    signed_in(page, world.users["coordinator"])
    with move_response(page):
        drag(page, number, "dispatched")
    expect(card(page, number, "dispatched")).to_be_visible()
    toast = page.locator("#toasts .toast.success", has_text=f"{number} moved to Dispatched")
    page.wait_for_timeout(6500)  # longer than an ordinary toast lives: this one waits for the undo
    with page.expect_response(lambda r: urlsplit(r.url).path == f"/cases/{case_id}/undo") as response:
        toast.get_by_role("button", name="Undo").click()
    assert response.value.status == 200
    expect(card(page, number, "sent")).to_be_visible()
    expect(page.locator("#toasts .toast.success", has_text="is back in Sent")).to_be_visible()
    fresh_case = fresh(case_id)
    assert fresh_case.status is Status.SENT and fresh_case.dispatched_at is None
    assert db.session.scalars(select(AuditEvent.action).where(
        AuditEvent.entity_id == str(case_id)).order_by(AuditEvent.seq.desc())).first() == "case.undo"


def test_errors_beside_the_case_forms_fields_clear_as_each_is_fixed(page, signed_in, world, db):
    signed_in(page, world.users["coordinator"], "/cases/new")
    page.get_by_role("button", name="Create draft case").click()
    provider = page.locator(".field", has=page.locator("#provider_id"))
    lab = page.locator(".field", has=page.locator("#lab_id"))
    expect(provider.locator(".error")).to_contain_text("Choose the provider")
    expect(lab.locator(".error")).to_contain_text("Choose the lab")
    page.select_option("#provider_id", str(world.provider.id))
    expect(provider.locator(".error")).to_be_hidden()
    expect(page.locator("#provider_id")).not_to_have_attribute("aria-invalid", "true")
    expect(lab.locator(".error")).to_be_visible()  # not fixed yet
