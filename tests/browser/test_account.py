"""A person opens their own page from the top bar, sees where they are signed in and signs out
everywhere: the other browser's session ends too."""
from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_sign_out_everywhere_from_your_account_page(browser, page, signed_in, live_server, world):
    user = world.users["coordinator"]
    other = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        phone = other.new_page()
        signed_in(phone, user)
        signed_in(page, user)
        page.locator(".topbar a.user").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("your account")
        sessions = page.locator("table.sessions tbody tr")
        expect(sessions).to_have_count(2)
        expect(page.locator("table.sessions tr.current")).to_contain_text("this browser")
        if os.environ.get("LM_SCREENSHOTS"):
            page.screenshot(path=os.path.join(os.environ["LM_SCREENSHOTS"], "account.png"), full_page=True)
        page.get_by_role("button", name="Sign out everywhere").click()
        # Another toast (an earlier flash) may still be showing: find the one that says it.
        expect(page.locator(".toast", has_text="You are signed out everywhere (2 sessions ended).")).to_be_visible()
        assert "/login" in page.url

        # The phone was left on the board: its next poll (every second here) finds the session
        # ended and sends it to the sign-in page with the reason. Whether that poll or a click
        # comes first is timing, so wait for the poll rather than racing it with a navigation.
        expect(phone).to_have_url(re.compile(r"/login"), timeout=10_000)
        expect(phone.locator(".toast", has_text="You signed out everywhere.")).to_be_visible()
        phone.goto(live_server("/patients"))
        assert "/login" in phone.url
    finally:
        other.close()
