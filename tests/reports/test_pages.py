"""The report pages: who may read them, the htmx partial, the charts and their tables, the click
through to the cases behind a figure, the CSV exports (formula injection too), the empty state and
the number of statements."""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re

import pytest
import time_machine

from portal.audit.actor import Actor
from portal.cases.services import remake
from portal.extensions import db
from portal.labs.models import Lab
from portal.practices.models import Organization
from tests import factories
from tests.board.test_board import StatementCounter
from tests.reports.conftest import made

NOW = dt.datetime(2031, 5, 15, 12, 0, tzinfo=dt.UTC)
RANGE = "from=2031-03-01&to=2031-04-30"


@pytest.fixture(autouse=True)
def on_15_may_2031():
    """The day the history's figures were worked out for (sign-in included: the session cookie
    must not look expired)."""
    with time_machine.travel(NOW, tick=True):
        yield


def get(client, url, htmx=False):
    return client.hx(url) if htmx else client.get(url)


def case_numbers(page_html: str) -> set[str]:
    return set(re.findall(r">(LC-\d{4}-\d{6})<", page_html))


def rows(csv_text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(csv_text)))


# -- who may read -------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["manager", "admin"])
def test_managers_and_admins_read_the_report(client, login, world, history, role):
    login(role)
    page = get(client, f"/reports/?{RANGE}")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "<html" in body and "Lab performance" in body and 'id="report"' in body
    assert "HX-Request" in page.headers["Vary"]
    assert 'href="/reports/"' in body  # the nav link


@pytest.mark.parametrize("url", ["/reports/", "/reports/cases", "/reports/labs.csv", "/reports/cases.csv"])
def test_coordinators_may_not(client, login, world, url):
    login("coordinator")
    assert client.get(url).status_code == 403
    assert 'href="/reports/"' not in client.get("/").get_data(as_text=True)


def test_anonymous_users_are_sent_to_login(client, world):
    response = client.get("/reports/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.hx("/reports/cases").status_code == 401


def test_another_practices_cases_are_never_counted(client, login, world, history):
    login("outsider")  # an admin of the other practice only
    body = get(client, f"/reports/?{RANGE}").get_data(as_text=True)
    # the other practice has exactly one case in the range: history["other"]
    assert ">1</span><span class=\"tile-label\">cases sent" in body.replace("\n", "")
    listed = get(client, f"/reports/cases?{RANGE}").get_data(as_text=True)
    assert case_numbers(listed) == {history.cases["other"].number}


def test_a_lab_of_another_organisation_is_not_found(client, login, world, history):
    org = Organization(name="Elsewhere")
    db.session.add(org)
    db.session.flush()
    foreign = factories.lab(org, name="Foreign Lab")
    db.session.commit()
    login("manager")
    for url in ("/reports/", "/reports/cases", "/reports/labs.csv"):
        assert client.get(f"{url}?lab={foreign.id}").status_code == 404, url
    assert client.get(f"/reports/?lab={history.lab_a.id}").status_code == 200


def test_unreadable_filters_say_so_with_422(client, login, world, history):
    login("manager")
    page = get(client, "/reports/?from=3-3-2031&service=spaceship")
    assert page.status_code == 422
    body = page.get_data(as_text=True)
    assert "Enter a date as YYYY-MM-DD." in body and "Choose a service from the list." in body
    assert get(client, f"/reports/cases?{RANGE}&month=1999-01").status_code == 422
    export = get(client, "/reports/labs.csv?to=nope")
    assert export.status_code == 422 and export.mimetype == "text/plain"
    assert get(client, "/reports/secrets.csv").status_code == 404


# -- the page -------------------------------------------------------------------------------------

def test_the_htmx_partial_is_the_report_block(client, login, world, history):
    login("manager")
    partial = get(client, f"/reports/?{RANGE}&lab={history.lab_a.id}", htmx=True)
    body = partial.get_data(as_text=True)
    assert partial.status_code == 200 and "<html" not in body
    assert body.lstrip().startswith('<div id="report"')
    assert "HX-Request" in partial.headers["Vary"]


def test_figures_on_the_page(client, login, world, history):
    login("manager")
    body = html.unescape(get(client, f"/reports/?{RANGE}").get_data(as_text=True))
    flat = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))
    assert "7 cases sent" in flat
    assert "6.5 · 8.5 business days sent → received" in flat
    assert "43% on time by the due date 3 of 7" in flat
    assert "80% in time for the seat appointment 4 of 5" in flat
    assert "29% remade 2 of 7" in flat
    assert "1,800.00 fees average 300.00" in flat
    # Lab A's row: 5 cases, 5.5 · 7.4 to dispatch, 6.5 · 9.1 to receive, 40% (2 of 5, 3 late)...
    table = body.split('<table class="list figures" aria-labelledby="by-lab"')[1].split("</table>")[0]
    row = next(r for r in table.split("<tr>") if history.lab_a.name in r)
    assert re.sub(r"<[^>]+>", " ", row).split() == [
        *history.lab_a.name.split(), "5", "5.5", "·", "7.4", "6.5", "·", "9.1", "40%", "2", "of", "5", "3", "late",
        "67%", "2", "of", "3", "1", "late", "20%", "1", "of", "5", "800.00", "200.00"]


def test_charts_are_inline_svg_with_a_title_a_description_and_a_table(client, login, world, history):
    login("manager")
    body = get(client, f"/reports/?{RANGE}").get_data(as_text=True)
    assert "<script" not in body.split('id="report"')[1]  # no chart library
    svgs = re.findall(r"<svg .*?</svg>", body, re.S)
    assert len(svgs) >= 6
    for svg in svgs:
        key = re.search(r'aria-labelledby="([\w-]+)-title" aria-describedby="\1-desc"', svg).group(1)
        # A group, not role=img: an image's children are presentational, and its bars are links.
        assert 'role="group"' in svg and f'<title id="{key}-title">' in svg and f'<desc id="{key}-desc">' in svg
        assert "style=" not in svg  # the CSP allows no inline styles: colours come from app.css
    months = next(s for s in svgs if 'id="chart-months-title"' in s)
    assert "Mar 2031 5; Apr 2031 2" in months
    assert 'href="/reports/cases?from=2031-03-01&amp;to=2031-04-30&amp;month=2031-04"' in months
    turnaround = next(s for s in svgs if 'id="chart-lab-turnaround-title"' in s)
    assert f"{history.lab_a.name} median 6.5, 90th percentile 9.1" in turnaround
    # each chart's figures are in a table beneath it, with the same links
    assert 'aria-labelledby="by-month"' in body and 'aria-labelledby="by-lab"' in body
    assert '<a href="/reports/cases?from=2031-03-01&amp;to=2031-04-30&amp;month=2031-04">Apr 2031</a>' in body


def test_bars_are_as_tall_as_their_figures(client, login, world, history):
    login("manager")
    svg = re.search(r'<svg [^>]*aria-labelledby="chart-months-title.*?</svg>',
                    get(client, f"/reports/?{RANGE}").get_data(as_text=True), re.S).group(0)
    heights = [float(h) for h in re.findall(r'<rect class="bar" [^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 2 and heights[0] / heights[1] == pytest.approx(5 / 2, rel=0.01)


def test_the_empty_state_explains_instead_of_drawing(client, login, world):
    login("manager")
    page = get(client, "/reports/")
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "No cases were sent to a lab in this range" in body and "Try a wider date range" in body
    assert "<svg" not in body.split('id="report"')[1]
    [total] = rows(get(client, "/reports/labs.csv").get_data(as_text=True))
    assert (total["lab"], total["cases"], total["sent_to_received_median_bdays"], total["fees_average"]) == (
        "All cases", "0", "", "")


def test_a_case_sent_but_not_back_yet_draws_no_broken_chart(client, login, world):
    made(world, world.labs["email"], "2031-05-12", due="2031-05-20")
    db.session.commit()
    login("manager")
    body = get(client, "/reports/").get_data(as_text=True)
    assert "No work has come back yet" in body
    assert 'id="chart-months-title"' in body and 'id="chart-lab-turnaround-title"' not in body


# -- click through --------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ("", ["a1", "a2", "a3", "a4", "a5", "b1", "b2"]),
    ("&lab={lab_a}", ["a1", "a2", "a3", "a4", "a5"]),
    ("&lab={lab_a}&show=late_due", ["a2", "a4", "a5"]),
    ("&show=late_seat", ["a3"]),
    ("&month=2031-04", ["b1", "b2"]),
    ("&service=night_guard", ["a1"]),
    ("&reason=fit", ["a3"]),
    ("&reason=shade&payer=practice", ["b1"]),
    ("&show=remade", ["a3", "b1"]),
])
def test_each_figure_lists_the_cases_behind_it(client, login, world, history, query, expected):
    login("manager")
    page = get(client, f"/reports/cases?{RANGE}" + query.format(lab_a=history.lab_a.id))
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    listed = case_numbers(body) - history.numbers("r3", "r_b1")  # a remade case shows its remake too
    assert listed == history.numbers(*expected)
    assert f"{len(expected)} case" in body


def test_every_link_of_the_report_lists_as_many_cases_as_its_figure(client, login, world, history):
    """Follow each row link of the lab, month and service tables: the list has the row's count."""
    login("manager")
    body = html.unescape(get(client, f"/reports/?{RANGE}").get_data(as_text=True))
    checked = 0
    for href, count in re.findall(r'<td class="num"><a href="(/reports/cases\?[^"]+)">(\d+)</a></td>', body):
        listed = case_numbers(get(client, href).get_data(as_text=True)) - history.numbers("r3", "r_b1")
        assert len(listed) == int(count), href
        checked += 1
    assert checked >= 8


def test_the_list_links_to_each_case_and_its_remake(client, login, world, history):
    login("manager")
    body = get(client, f"/reports/cases?{RANGE}&reason=fit").get_data(as_text=True)
    assert f'href="/cases/{history.cases["a3"].id}"' in body and f'href="/cases/{history.cases["r3"].id}"' in body


# -- CSV ----------------------------------------------------------------------------------------------

def test_each_table_exports_as_csv(client, login, world, history):
    login("manager")
    labs = get(client, f"/reports/labs.csv?{RANGE}")
    assert labs.mimetype == "text/csv" and "attachment" in labs.headers["Content-Disposition"]
    by_lab = {r["lab"]: r for r in rows(labs.get_data(as_text=True))}
    a = by_lab[history.lab_a.name]
    assert (a["cases"], a["sent_to_dispatched_median_bdays"], a["sent_to_dispatched_p90_bdays"]) == ("5", "5.5", "7.4")
    assert (a["sent_to_received_median_bdays"], a["sent_to_received_p90_bdays"]) == ("6.5", "9.1")
    assert (a["on_time_due"], a["due_known"], a["on_time_due_pct"]) == ("2", "5", "40")
    assert (a["on_time_seat"], a["seat_known"], a["on_time_seat_pct"]) == ("2", "3", "66.7")
    assert (a["remade"], a["remake_pct"], a["fees_total"], a["fees_average"]) == ("1", "20", "800.00", "200.00")
    assert by_lab["All cases"]["cases"] == "7"
    months = rows(get(client, f"/reports/months.csv?{RANGE}").get_data(as_text=True))
    assert [(r["month"], r["cases"]) for r in months] == [("Mar 2031", "5"), ("Apr 2031", "2"), ("All cases", "7")]
    services = rows(get(client, f"/reports/services.csv?{RANGE}").get_data(as_text=True))
    assert [r["service"] for r in services] == ["Crown", "Bridge", "Night guard", "All cases"]
    remakes = rows(get(client, f"/reports/remakes.csv?{RANGE}").get_data(as_text=True))
    assert remakes == [
        {"reason": "Fit", "remade": "1", "share_of_cases_pct": "14.3", "paid_by_practice": "0", "paid_by_lab": "1"},
        {"reason": "Shade", "remade": "1", "share_of_cases_pct": "14.3", "paid_by_practice": "1", "paid_by_lab": "0"},
    ]
    cases = rows(get(client, f"/reports/cases.csv?{RANGE}&show=late_seat").get_data(as_text=True))
    assert [(r["case"], r["seat"], r["on_time_seat"], r["sent_to_received_bdays"]) for r in cases] == [
        (history.cases["a3"].number, "2031-03-11", "no", "7")]
    assert "patient" not in cases[0]  # an export carries case numbers, not patient names


def test_csv_cells_are_safe_from_formula_injection(client, login, world, history):
    evil = '=HYPERLINK("http://evil.test","x")'
    lab = db.session.get(Lab, history.lab_a.id)
    lab.name = evil
    db.session.commit()
    login("manager")
    for table in ("labs", "cases"):
        text = get(client, f"/reports/{table}.csv?{RANGE}").get_data(as_text=True)
        cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
        assert "'" + evil in cells, table
        assert evil not in cells
        assert not any(cell.startswith(("=", "+", "@")) for cell in cells), table


# -- statements ---------------------------------------------------------------------------------------

def test_statement_count_does_not_grow_with_cases_or_labs(client, login, world):
    login("manager")
    labs = [world.labs["email"]]

    def count_for(n_cases, n_labs):
        while len(labs) < n_labs:
            labs.append(factories.lab(world.org))
        for n in range(n_cases):
            case = made(world, labs[n % len(labs)], "2031-03-03", "2031-03-07", "2031-03-10", due="2031-03-10",
                        seat="2031-03-12", fee="100")
            if n % 5 == 0:
                remake(case, Actor.user(world.users["coordinator"]), "fit", "lab", "loose")
        db.session.commit()
        counts = []
        for url in (f"/reports/?{RANGE}", f"/reports/cases?{RANGE}", f"/reports/labs.csv?{RANGE}"):
            with StatementCounter(db.engine) as counter:
                assert get(client, url).status_code == 200
            counts.append(counter.count)
        return counts

    small = count_for(3, 1)
    large = count_for(60, 6)
    print("statements per request (report, cases, csv):", small, large)
    assert small == large, (small, large)
    assert max(large) <= 8
