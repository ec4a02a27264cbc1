"""The report in a real Chromium: the filters swap the report in place and push the URL, a bar
of a chart opens the cases behind it, and Back returns to the filtered report."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import axe_violations
from tests.reports.conftest import history  # noqa: F401  (the hand-worked history of the report tests)

pytestmark = pytest.mark.browser
RANGE = "from=2031-03-01&to=2031-04-30"


def test_filter_then_click_a_bar_through_to_its_cases(page, signed_in, world, history):  # noqa: F811
    signed_in(page, world.users["manager"], f"/reports/?{RANGE}")
    expect(page.locator(".tiles")).to_contain_text("7")
    page.select_option("select[name=lab]", label=history.lab_a.name)
    expect(page.locator(".report-scope")).to_contain_text(history.lab_a.name)
    assert f"lab={history.lab_a.id}" in page.url
    expect(page.locator(".tiles li").first).to_contain_text("5")

    page.locator("#chart-months a.mark").first.click()  # March 2031, lab A's five cases
    expect(page.locator("h1")).to_contain_text("5 cases")
    assert re.search(r"/reports/cases\?.*month=2031-03", page.url)
    for name in ("a1", "a2", "a3", "a4", "a5"):
        expect(page.get_by_role("link", name=history.cases[name].number, exact=True)).to_be_visible()

    page.go_back()
    expect(page.locator(".report-scope")).to_contain_text(history.lab_a.name)
    expect(page.locator("select[name=lab]")).to_have_value(str(history.lab_a.id))


def test_the_report_passes_axe(page, signed_in, world, history):  # noqa: F811
    """The charts' bar links sat inside role=img pictures (axe: nested-interactive, serious)."""
    signed_in(page, world.users["manager"], f"/reports/?{RANGE}")
    expect(page.locator("#chart-months a.mark").first).to_be_attached()
    assert axe_violations(page) == []
