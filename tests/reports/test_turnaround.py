"""Turnaround learned from the practice's own history, offered beside the case form's due date.

From the history in conftest.py, lab A's crowns came back (sent -> received, business days) in
2 ("before"), 5 (a1), 6 (a2), 7 (a3) and 10 (a4) days: median 6; 90th percentile
7 + 0.6 * (10 - 7) = 8.8, so 9 days to plan with. a1's night guard is the only one: too few.
The cancelled case, the draft, a5 (still out) and the other practice's case don't count.
"""
from __future__ import annotations

import datetime as dt
import html

import pytest
import time_machine

from portal.cases.duedates import add_business_days
from portal.extensions import db
from portal.labs.models import Lab
from portal.practices.models import Organization
from portal.reports.turnaround import learned, planned_due_date
from tests.reports.conftest import TODAY

NOW = dt.datetime(2031, 5, 15, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def on_15_may_2031():
    with time_machine.travel(NOW, tick=True):
        yield


def test_learned_turnaround_per_lab_and_restoration(history, world):
    crown, night_guard, bridge = learned(world.practice.id, history.lab_a.id, ["crown", "night_guard", "bridge"],
                                         TODAY)
    assert (crown.cases, crown.median, crown.p90, crown.enough, crown.plan_days) == (5, 6, pytest.approx(8.8), True, 9)
    assert (night_guard.cases, night_guard.enough, night_guard.plan_days) == (1, False, None)
    assert (bridge.cases, bridge.median, bridge.plan_days) == (0, None, None)
    # Lab B's crown (b1) is its own history, not lab A's.
    [b_crown] = learned(world.practice.id, history.lab_b.id, ["crown"], TODAY)
    assert (b_crown.cases, b_crown.median) == (1, 5)


def test_only_the_last_year_counts(history, world):
    # On 20 March 2032 the year goes back to 21 March 2031, after every crown of lab A came back.
    [crown] = learned(world.practice.id, history.lab_a.id, ["crown"], dt.date(2032, 3, 20))
    assert crown.cases == 0 and not crown.enough
    [crown] = learned(world.practice.id, history.lab_a.id, ["crown"], dt.date(2032, 3, 15))
    assert crown.cases == 1 and crown.median == 10  # a4, back on 17 March 2031


def test_the_planned_due_date_is_the_90th_percentile_in_business_days(history, world):
    history_a = learned(world.practice.id, history.lab_a.id, ["crown", "night_guard"], TODAY)
    # Thu 15 May 2031 + 9 business days = Wed 28 May; the night guard has too little history to count.
    assert planned_due_date(world.practice.id, history_a, TODAY) == dt.date(2031, 5, 28)
    assert planned_due_date(world.practice.id, history_a[1:], TODAY) is None


def _advice(client, lab_id, *restorations, **extra):
    params = {"lab_id": lab_id, **{f"items-{i}-restoration": r for i, r in enumerate(restorations)}, **extra}
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.hx(f"/cases/due-date?{query}")


def test_the_case_form_offers_the_learned_turnaround(client, login, history, world):
    login()
    lab_a = history.lab_a
    stated = lab_a.service_for("crown").turnaround_days
    response = _advice(client, lab_a.id, "crown", "night_guard")
    assert response.status_code == 200
    page = html.unescape(response.get_data(as_text=True))
    assert 'id="due-field"' in page and "<html" not in page  # the block only
    assert f"stated turnaround, {stated} business days" in page
    assert "back in <strong>6</strong> business days" in page and "8.8 for 9 in 10 · 5 cases in the last year" in page
    assert "Night guard: 1 case back from" in page and "too few to learn" in page
    planned = add_business_days(dt.date.today(), 9)
    assert f'"use": "{planned.isoformat()}"' in page

    # "Plan with ..." puts the date in the field; the form still has to be saved.
    chosen = _advice(client, lab_a.id, "crown", use=planned.isoformat()).get_data(as_text=True)
    assert f'value="{planned.isoformat()}"' in chosen and "Plan with" not in chosen
    assert "planned from this history" in chosen


def test_no_advice_without_a_lab_of_the_group_and_only_for_editors(client, login, history, world):
    login()
    page = _advice(client, 0, "crown").get_data(as_text=True)
    assert 'id="due_date"' in page and "due-advice" not in page
    org = Organization(name="Elsewhere")
    db.session.add(org)
    db.session.flush()
    stranger = Lab(organization_id=org.id, name="Not ours", channel=history.lab_a.channel)
    db.session.add(stranger)
    db.session.commit()
    assert "due-advice" not in _advice(client, stranger.id, "crown").get_data(as_text=True)
    # A restoration the catalogue doesn't know is left out rather than shown back.
    odd = _advice(client, history.lab_a.id, "crown", "<b>teleport</b>").get_data(as_text=True)
    assert "teleport" not in odd and "Crown from" in odd
    login("manager")
    assert _advice(client, history.lab_a.id, "crown").status_code == 403


def test_the_new_case_form_shows_the_advice_once_a_lab_is_chosen(client, login, history):
    login()
    blank = client.get("/cases/new").get_data(as_text=True)
    assert 'id="due-field"' in blank and "due-advice" not in blank
    assert "hx-get=\"/cases/due-date\"" in blank  # the lab and restoration selects refresh it
