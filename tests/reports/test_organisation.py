"""The DSO view: the report across an organisation's practices, each practice and its labs side by
side. Who may read it (organisation managers of that organisation only), 404 for another
organisation's practice or lab, the figures against the practice reports, the click-through,
CSV, the htmx partial and the number of statements."""
from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine

from portal.extensions import db
from portal.labs.models import Lab
from portal.practices.models import Organization, OrganizationMembership, OrganizationRole
from tests import factories
from tests.board.test_board import StatementCounter
from tests.reports.conftest import made
from tests.reports.test_pages import case_numbers, get, rows

NOW = dt.datetime(2031, 5, 15, 12, 0, tzinfo=dt.UTC)
RANGE = "from=2031-03-01&to=2031-04-30"
URL = f"/reports/organisation?{RANGE}"


@pytest.fixture(autouse=True)
def on_15_may_2031():
    with time_machine.travel(NOW, tick=True):
        yield


def org_manager(world, role: str = "manager", *, active: bool = True, org=None):
    user = world.users[role]
    db.session.add(OrganizationMembership(user_id=user.id, organization_id=(org or world.org).id,
                                          role=OrganizationRole.MANAGER, active=active))
    db.session.commit()
    return user


# -- who may read -------------------------------------------------------------------------------------

def test_an_organisation_manager_reads_every_practice_side_by_side(client, login, world, history):
    org_manager(world)
    login("manager")
    page = client.get(URL)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "Practices side by side" in body and 'id="section-matrix"' in body
    assert world.practice.name in body and world.other_practice.name in body
    assert 'style="' not in body and "<script>" not in body
    # the practice's own report offers the way there
    assert "/reports/organisation" in client.get(f"/reports/?{RANGE}").get_data(as_text=True)


@pytest.mark.parametrize("role", ["coordinator", "manager", "admin"])
def test_a_practices_own_roles_are_not_enough(client, login, world, history, role):
    login(role)
    for url in (URL, f"/reports/organisation/cases?{RANGE}", f"/reports/organisation/practices.csv?{RANGE}"):
        assert get(client, url).status_code == 403, url
    assert "/reports/organisation" not in client.get(f"/reports/?{RANGE}").get_data(as_text=True) or role == "coordinator"


def test_a_deactivated_or_another_organisations_role_is_not_enough(client, login, world, history):
    org_manager(world, active=False)
    elsewhere = Organization(name="Another DSO")
    db.session.add(elsewhere)
    db.session.commit()
    org_manager(world, "admin", org=elsewhere)
    login("manager")
    assert client.get(URL).status_code == 403
    login("admin")  # manages another organisation, is admin here: still no
    assert client.get(URL).status_code == 403


def test_anonymous_users_are_sent_to_login(client, world):
    response = client.get(URL)
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_another_organisations_practice_or_lab_is_not_found(client, login, world, history):
    org_manager(world)
    login("manager")
    elsewhere = Organization(name="Another DSO")
    db.session.add(elsewhere)
    db.session.flush()
    their_practice = factories.practice(elsewhere, "Their practice")
    their_lab = factories.lab(elsewhere)
    db.session.commit()
    for query in (f"practice={their_practice.id}", f"lab={their_lab.id}", "practice=999999"):
        for path in ("/reports/organisation", "/reports/organisation/cases", "/reports/organisation/labs.csv"):
            assert client.get(f"{path}?{RANGE}&{query}").status_code == 404, (path, query)
    assert client.get(f"/reports/organisation/nothing.csv?{RANGE}").status_code == 404
    assert client.get(f"/reports/organisation?{RANGE}&practice=first").status_code == 422


# -- the figures ------------------------------------------------------------------------------------------

def test_the_organisation_adds_up_its_practices(client, login, world, history):
    org_manager(world)
    login("manager")
    by_practice = {r["practice"]: r for r in rows(client.get(f"/reports/organisation/practices.csv?{RANGE}")
                                                    .get_data(as_text=True))}
    assert by_practice[world.practice.name]["cases"] == "7"  # as the practice's own report
    assert by_practice[world.other_practice.name]["cases"] == "1"  # "other", sent 3 Mar, received Wed 5 (2 days)
    assert by_practice[world.other_practice.name]["sent_to_received_median_bdays"] == "2"
    assert by_practice["All cases"]["cases"] == "8"
    own = {r["lab"]: r for r in rows(client.get(f"/reports/labs.csv?{RANGE}").get_data(as_text=True))}
    pairs = {(r["practice"], r["lab"]): r for r in rows(
        client.get(f"/reports/organisation/practice-labs.csv?{RANGE}").get_data(as_text=True))}
    for lab in (history.lab_a, history.lab_b):
        mine = pairs[(world.practice.name, lab.name)]
        assert {k: v for k, v in mine.items() if k not in ("practice", "lab")} == {
            k: v for k, v in own[lab.name].items() if k != "lab"}
    assert pairs[(world.other_practice.name, history.lab_a.name)]["fees_total"] == "900.00"
    # one practice only: the same figures as that practice's own report
    only = {r["lab"]: r for r in rows(client.get(
        f"/reports/organisation/labs.csv?{RANGE}&practice={world.practice.id}").get_data(as_text=True))}
    assert only == own


def test_the_matrix_marks_the_quickest_lab_per_practice(client, login, world, history):
    org_manager(world)
    login("manager")
    body = client.get(URL).get_data(as_text=True)
    body = body[body.index('id="section-matrix"'):]
    # Main Street: lab A back in 6.5 (median), lab B in 6: lab B is the quickest
    row = re.search(rf"<th scope=\"row\"><a [^>]+>{re.escape(world.practice.name)}</a></th>(.*?)</tr>", body, re.S)
    cells = re.findall(r'<td class="num( best)?">(.*?)</td>', row.group(1), re.S)
    quickest = [c for best, c in cells if best]
    assert len(quickest) == 1 and "quickest" in quickest[0] and ">6<" in quickest[0]
    # the other practice used one lab: nothing to compare
    row = re.search(rf"<th scope=\"row\"><a [^>]+>{re.escape(world.other_practice.name)}</a></th>(.*?)</tr>", body, re.S)
    assert "quickest" not in row.group(1)


def test_click_through_lists_every_practices_cases_without_patient_names(client, login, world, history):
    org_manager(world)
    login("manager")
    page = client.get(f"/reports/organisation/cases?{RANGE}&practice={world.other_practice.id}")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and case_numbers(body) == {history.cases["other"].number}
    assert world.other_practice.name in body
    other_id = history.cases["other"].id
    assert f'href="/cases/{other_id}"' not in body  # not a case of the current practice: no link to a 404
    everyone = client.get(f"/reports/organisation/cases?{RANGE}").get_data(as_text=True)
    # (r3 and r_b1 are the remakes of a3 and b1, named in their rows)
    assert case_numbers(everyone) == history.numbers("a1", "a2", "a3", "a4", "a5", "b1", "b2", "other", "r3", "r_b1")
    assert f'href="/cases/{history.cases["a1"].id}"' in everyone
    late = client.get(f"/reports/organisation/cases?{RANGE}&show=late_due").get_data(as_text=True)
    assert case_numbers(late) == history.numbers("a2", "a4", "a5", "b2")
    exported = rows(client.get(f"/reports/organisation/cases.csv?{RANGE}&lab={history.lab_a.id}").get_data(as_text=True))
    assert {r["case"] for r in exported} == history.numbers("a1", "a2", "a3", "a4", "a5", "other")
    assert {r["practice"] for r in exported} == {world.practice.name, world.other_practice.name}
    assert "patient" not in exported[0]


def test_every_link_of_the_view_lists_as_many_cases_as_its_figure(client, login, world, history):
    org_manager(world)
    login("manager")
    body = client.get(URL).get_data(as_text=True)
    links = re.findall(r'<td class="num"><a href="(/reports/organisation/cases\?[^"]+)">(\d+)</a></td>', body)
    assert len(links) >= 6
    for href, count in links:
        listed = case_numbers(client.get(href.replace("&amp;", "&")).get_data(as_text=True))
        listed -= history.numbers("r3", "r_b1")  # the remakes named beside a3 and b1
        assert len(listed) == int(count), href


def test_the_htmx_partial_is_the_report_block(client, login, world, history):
    org_manager(world)
    login("manager")
    partial = get(client, URL, htmx=True).get_data(as_text=True)
    assert partial.lstrip().startswith('<div id="report"') and "<html" not in partial


def test_long_lists_are_paged(client, login, world):
    org_manager(world)
    login("manager")
    for n in range(105):
        made(world, world.labs["email"], "2031-03-03", practice=world.practice if n % 2 else world.other_practice)
    db.session.commit()
    first = client.get(f"/reports/organisation/cases?{RANGE}").get_data(as_text=True)
    second = client.get(f"/reports/organisation/cases?{RANGE}&page=2").get_data(as_text=True)
    assert len(case_numbers(first)) == 100 and len(case_numbers(second)) == 5
    assert not case_numbers(first) & case_numbers(second)
    assert "105 cases" in first and "page 1 of 2" in first and "page=2" in first
    assert client.get(f"/reports/organisation/cases?{RANGE}&page=0").status_code == 422
    assert len(rows(client.get(f"/reports/organisation/cases.csv?{RANGE}").get_data(as_text=True))) == 105


# -- statements ------------------------------------------------------------------------------------------

def test_statement_count_does_not_grow_with_practices_labs_or_cases(client, login, world):
    org_manager(world)
    login("manager")
    practices, labs = [world.practice, world.other_practice], [world.labs["email"]]

    def count_for(n_practices, n_labs, n_cases):
        while len(practices) < n_practices:
            practices.append(factories.practice(world.org, f"Practice {len(practices) + 1}"))
        while len(labs) < n_labs:
            labs.append(factories.lab(world.org))
        for n in range(n_cases):
            made(world, labs[n % len(labs)], "2031-03-03", "2031-03-07", "2031-03-10", due="2031-03-10",
                 seat="2031-03-12", fee="100", practice=practices[n % len(practices)])
        db.session.commit()
        counts = []
        for url in (URL, f"/reports/organisation/cases?{RANGE}", f"/reports/organisation/practices.csv?{RANGE}",
                    f"/reports/?{RANGE}"):
            with StatementCounter(db.engine) as counter:
                assert get(client, url).status_code == 200
            counts.append(counter.count)
        return counts

    small = count_for(2, 1, 3)
    large = count_for(7, 5, 60)
    print("statements per request (view, cases, csv, practice report):", small, large)
    assert small == large, (small, large)
    assert max(large) <= 9


def test_labs_of_the_organisation_only(world):
    """The view's lab choices come from the organisation (a lab row of another DSO never shows)."""
    from portal.reports.services import lab_choices

    elsewhere = Organization(name="Another DSO")
    db.session.add(elsewhere)
    db.session.flush()
    factories.lab(elsewhere, name="Their lab")
    assert "Their lab" not in {lab.name for lab in lab_choices(world.org.id)}
    assert db.session.query(Lab).count() >= 4
