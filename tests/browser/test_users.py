"""An admin adds a person in a real Chromium, changes their role inline (htmx: the row is swapped,
the page stays), and the person sets a password from the emailed link and signs in."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import watch_for_script_errors

pytestmark = pytest.mark.browser


def test_admin_adds_a_person_who_sets_a_password_and_signs_in(browser, page, signed_in, live_server, world):
    signed_in(page, world.users["admin"], "/admin/users/")
    page.get_by_label("Name", exact=True).fill("Nadia Okafor")
    page.get_by_label("Email", exact=True).fill("nadia@test.test")
    page.get_by_label("Role", exact=True).select_option("manager")
    page.get_by_role("button", name="Add to Main Street Dental").click()
    expect(page.locator(".toast")).to_contain_text("Nadia Okafor added as manager")
    row = page.locator("tr[data-email='nadia@test.test']")
    expect(row.get_by_label("Role of Nadia Okafor")).to_have_value("manager")

    page.evaluate("window.stillThisPage = true")  # gone if the browser loaded a new page
    row.get_by_label("Role of Nadia Okafor").select_option("coordinator")
    expect(row).to_contain_text("Nadia Okafor is now coordinator.")
    assert page.evaluate("window.stillThisPage") is True

    page.goto(live_server("/dev/mailbox/"))
    page.get_by_role("link", name="Your Lab Manager account at Main Street Dental").click()
    href = page.locator("#mail-text a").first.get_attribute("href")
    assert href.startswith(live_server("/set-password/"))

    person = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        phone = person.new_page()
        errors = watch_for_script_errors(phone)
        phone.goto(href)
        expect(phone.locator(".login-card")).to_contain_text("Hello Nadia Okafor")
        phone.get_by_label("New password").fill("teeth and crowns")
        phone.get_by_label("Repeat it").fill("teeth and crowns")
        phone.get_by_role("button", name="Set password").click()
        expect(phone.locator(".toast")).to_contain_text("Your password is set")
        phone.get_by_label("Email").fill("nadia@test.test")
        phone.get_by_label("Password").fill("teeth and crowns")
        phone.get_by_role("button", name="Sign in").click()
        expect(phone.locator(".topbar .user")).to_contain_text("Nadia Okafor · coordinator")
        assert errors == []
    finally:
        person.close()
