"""The audit page and its CSV export: filters, roles, the htmx partial, practice isolation (docs/reliability.md F6)
and formula injection in the export."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest
import time_machine

from portal.audit.actor import Actor
from portal.audit.queries import csv_safe
from portal.audit.record import record
from portal.extensions import db

DAY1 = dt.datetime(2031, 5, 5, 9, 0, tzinfo=dt.UTC)
DAY2 = dt.datetime(2031, 5, 6, 23, 30, tzinfo=dt.UTC)
DAY3 = dt.datetime(2031, 5, 8, 0, 15, tzinfo=dt.UTC)


def _probe(world, marker: str, *, when=DAY1, action="probe.seen", actor=None, practice=None, entity="probe"):
    """One row; the marker is in the row's `after` (and is its id, unless it is about a case)."""
    with time_machine.travel(when, tick=False):
        record(action, entity, marker if entity == "probe" else 7, after={"marker": marker},
               actor=actor or Actor.user(world.users["coordinator"]),
               practice_id=(practice or world.practice).id)


@pytest.fixture()
def trail(world):
    """Rows in both practices, on three days, by two people and a lab."""
    lab = Actor.lab(world.lab)
    manager = Actor.user(world.users["manager"])
    _probe(world, "m-day1", when=DAY1)
    _probe(world, "m-day2", when=DAY2, action="case.dispatch", actor=lab, entity="lab_case")
    _probe(world, "m-day3", when=DAY3, action="case.receive", actor=manager, entity="lab_case")
    _probe(world, "m-note", when=DAY2, action="note.add", actor=manager)
    _probe(world, "other-1", when=DAY2, practice=world.other_practice)
    _probe(world, "other-2", when=DAY2, action="case.dispatch", actor=lab, practice=world.other_practice)
    db.session.commit()


MARKERS = {"m-day1", "m-day2", "m-day3", "m-note", "other-1", "other-2"}


def _markers(text: str) -> set[str]:
    """The markers in the rows (not in the filter form above them, which echoes the query)."""
    if 'id="audit-rows"' in text:
        text = text[text.index('id="audit-rows"'):]
    return set(re.findall(r"\b(m-\w+|other-\d)\b", text)) & MARKERS


@pytest.mark.parametrize("role", ["manager", "admin"])
def test_managers_and_admins_read_the_trail(client, login, world, trail, role):
    login(role)
    page = client.get("/audit/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<html" in html and "Audit trail" in html and 'id="audit-rows"' in html
    assert {"m-day1", "m-day2", "m-day3", "m-note"} <= _markers(html)
    assert "HX-Request" in page.headers["Vary"]


def test_coordinators_may_not_read_the_trail(client, login, world, trail):
    login("coordinator")
    assert client.get("/audit/").status_code == 403
    assert client.get("/audit/export.csv").status_code == 403


def test_anonymous_users_are_sent_to_login(client, world):
    response = client.get("/audit/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.hx("/audit/").status_code == 401


def test_another_practices_rows_are_never_shown(client, login, world, trail):
    login("manager")
    html = client.get("/audit/").get_data(as_text=True)
    assert not {m for m in _markers(html) if m.startswith("other")}
    html = client.get("/audit/?action=case.dispatch").get_data(as_text=True)
    assert _markers(html) == {"m-day2"}
    export = client.get("/audit/export.csv").get_data(as_text=True)
    assert "m-day1" in export and "other-" not in export

    login("outsider")  # admin of the other practice
    html = client.get("/audit/").get_data(as_text=True)
    markers = _markers(html)
    assert {"other-1", "other-2"} <= markers and not {m for m in markers if m.startswith("m-")}


@pytest.mark.parametrize(("query", "expected"), [
    ("action=case.", {"m-day2", "m-day3"}),  # a prefix of the action
    ("action=case.receive", {"m-day3"}),
    ("action=nothing.like.this", set()),
    ("actor=manager@", {"m-day3", "m-note"}),
    ("actor=EMAIL+LAB", {"m-day2"}),  # the lab's name, any case
    ("entity=lab_case", {"m-day2", "m-day3"}),
    ("entity=probe:m-day1", {"m-day1"}),
    ("entity=lab_case:7", {"m-day2", "m-day3"}),
    ("entity=probe:m-day2", set()),  # m-day2 is a lab_case row
    ("from=2031-05-06", {"m-day2", "m-day3", "m-note"}),
    ("to=2031-05-06", {"m-day1", "m-day2", "m-note"}),  # the whole of the last day
    ("from=2031-05-06&to=2031-05-06", {"m-day2", "m-note"}),
    ("from=2031-05-07&to=2031-05-07", set()),
    ("from=not-a-date", {"m-day1", "m-day2", "m-day3", "m-note"}),  # ignored, not an error
    ("action=case.&actor=manager&from=2031-05-07", {"m-day3"}),
])
def test_filters(client, login, world, trail, query, expected):
    login("manager")
    page = client.get(f"/audit/?{query}")
    assert page.status_code == 200
    assert {m for m in _markers(page.get_data(as_text=True)) if m.startswith("m-")} == expected
    export = client.get(f"/audit/export.csv?{query}").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(export)))
    assert set().union(*(_markers(r["after"]) for r in rows)) == expected


def test_the_htmx_request_gets_only_the_rows(client, login, world, trail):
    login("manager")
    partial = client.hx("/audit/?action=note.", target="audit-rows")
    body = partial.get_data(as_text=True)
    assert partial.status_code == 200
    assert "<html" not in body and "Audit trail" not in body
    assert body.lstrip().startswith('<div id="audit-rows">')
    assert _markers(body) == {"m-note"}
    assert "HX-Request" in partial.headers["Vary"]


def test_no_rows_says_so(client, login, world, trail):
    login("manager")
    assert "No audit rows match." in client.get("/audit/?action=zzz").get_data(as_text=True)


def test_the_page_holds_a_hundred_rows_and_links_to_older_ones(client, login, world):
    for i in range(105):
        record("bulk.row", "probe", f"b{i}", actor=Actor.system("bulk"), practice_id=world.practice.id)
    db.session.commit()
    login("manager")
    html = client.get("/audit/?action=bulk.").get_data(as_text=True)
    shown = re.findall(r"probe b(\d+)\b", html)
    assert len(shown) == 100 and shown[0] == "104"
    older = re.search(r'href="(/audit/\?[^"]*before=\d+[^"]*)"', html).group(1).replace("&amp;", "&")
    assert "action=bulk." in older
    rest = re.findall(r"probe b(\d+)\b", client.get(older).get_data(as_text=True))
    assert rest == ["4", "3", "2", "1", "0"]


def test_patient_names_and_odd_text_in_rows_are_escaped(client, login, world):
    record("probe.xss", "probe", "x1", after={"name": "<script>alert(1)</script>"},
           actor=Actor("system", "", '" onmouseover="alert(1)'), practice_id=world.practice.id)
    db.session.commit()
    login("manager")
    html = client.get("/audit/?action=probe.xss").get_data(as_text=True)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert '" onmouseover="alert(1)' not in html


# -- CSV export -----------------------------------------------------------------------------------

COLUMNS = ["seq", "occurred_at", "actor_type", "actor_id", "actor_label", "on_behalf_of", "action",
           "entity_type", "entity_id", "before", "after", "source", "ip", "outcome", "correlation_id", "hash"]


@pytest.mark.parametrize(("value", "expected"), [
    ('=HYPERLINK("http://evil.test","x")', '\'=HYPERLINK("http://evil.test","x")'),
    ("+1", "'+1"), ("-2", "'-2"), ("@x", "'@x"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"),
    ("|cmd", "'|cmd"), ("%0A", "'%0A"),
    ("plain", "plain"), ("a=b", "a=b"), ("", ""), (None, ""), (3, "3"),
])
def test_csv_safe(value, expected):
    assert csv_safe(value) == expected


def test_export_columns_and_formula_injection(client, login, world):
    sneaky = Actor("system", "+1", '=HYPERLINK("http://evil.test","click")', on_behalf_of="@x", source="-2")
    record("probe.csv", "probe", "=1+2", before={}, after={"note": "=cmd"}, actor=sneaky,
           practice_id=world.practice.id)
    db.session.commit()
    login("manager")
    response = client.get("/audit/export.csv?action=probe.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="audit-') and disposition.endswith('.csv"')

    reader = csv.reader(io.StringIO(response.get_data(as_text=True)))
    header = next(reader)
    assert header == COLUMNS
    rows = [dict(zip(header, r)) for r in reader]
    assert len(rows) == 1
    row = rows[0]
    assert row["actor_label"] == '\'=HYPERLINK("http://evil.test","click")'
    assert row["actor_id"] == "'+1" and row["source"] == "'-2" and row["on_behalf_of"] == "'@x"
    assert row["entity_id"] == "'=1+2"
    assert row["action"] == "probe.csv" and row["outcome"] == "ok" and row["actor_type"] == "system"
    assert row["after"] == '{"note":"=cmd"}'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", row["occurred_at"])
    assert re.fullmatch(r"[0-9a-f]{64}", row["hash"])
    for name in COLUMNS:
        assert not row[name].startswith(("=", "+", "-", "@", "\t", "\r")), name


def test_export_is_a_get_that_writes_nothing(client, login, world, trail):
    from sqlalchemy import func, select

    from portal.audit.models import AuditEvent

    login("manager")
    before = db.session.scalar(select(func.count()).select_from(AuditEvent))
    client.get("/audit/export.csv")
    client.get("/audit/")
    assert db.session.scalar(select(func.count()).select_from(AuditEvent)) == before
