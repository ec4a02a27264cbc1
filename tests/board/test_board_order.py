"""The board's order within a column, pinned: due date (no due date last), then case id. The
first page of each column and its "show more" pages read the same order without gaps or repeats."""
import datetime as dt
import html as html_lib
import re

import pytest

from portal.cases.lifecycle import Status
from portal.extensions import db as _db
from tests import factories

LIMIT = 3
CARD_ID = re.compile(r'data-case-id="(\d+)"')
MORE_HREF = re.compile(r'<a class="more" id="more-[a-z_]+"[^>]*?href="([^"]+)"')


def _column_html(page: str, status: Status) -> str:
    return page.split(f'class="column" data-status="{status.value}"', 1)[1].split("</section>", 1)[0]


def _walk_column(client, page: str, status: Status) -> tuple[list[int], list[int]]:
    """The ids of a column's first page, and of the whole column read through its "show more"
    links (as htmx follows them: each answer appends cards and swaps in the next link)."""
    section = _column_html(page, status)
    first = [int(i) for i in CARD_ID.findall(section)]
    seen, link = list(first), MORE_HREF.search(section)
    while link:
        more = client.hx(html_lib.unescape(link.group(1)), target=f"cards-{status.value}").get_data(as_text=True)
        ids = [int(i) for i in CARD_ID.findall(more)]
        assert ids, "a show-more link that brings no cards"
        seen += ids
        link = MORE_HREF.search(more)
    return first, seen


def _expected(cases, **only) -> dict[Status, list[int]]:
    by_status: dict[Status, list] = {}
    for c in cases:
        if all(getattr(c, k) == v for k, v in only.items()):
            by_status.setdefault(c.status, []).append(c)
    return {s: [c.id for c in sorted(cs, key=lambda c: (c.due_date is None, c.due_date or dt.date.min, c.id))]
            for s, cs in by_status.items()}


@pytest.fixture()
def mixed(app, world):
    """Cases over seven columns, created out of due-date order, with ties on due date and cases
    with no due date; plus cases the board must skip (fitted long ago, cancelled)."""
    app.config["BOARD_COLUMN_LIMIT"] = LIMIT
    today = dt.date.today()
    days = [5, 2, 5, None, 2, -3, 0, None, 9, 2, None, -3, 5, 0]  # ties, and no due date, out of id order
    statuses = [Status.SENT, Status.IN_PRODUCTION, Status.DRAFT, Status.ACKNOWLEDGED, Status.ON_HOLD,
                Status.RECEIVED, Status.FITTED, Status.SENT, Status.IN_PRODUCTION]  # two long columns
    labs = [world.lab, world.labs["manual"]]
    cases = []
    for n in range(len(days) * 3):
        status, day = statuses[n % len(statuses)], days[n % len(days)]
        case = factories.case(world, status, lab=labs[n % 3 % 2], commit=False)
        case.due_date = today + dt.timedelta(days=day) if day is not None else None
        cases.append(case)
    old = factories.case(world, Status.FITTED, commit=False)
    old.fitted_at = dt.datetime.now() - dt.timedelta(days=60)
    factories.case(world, Status.CANCELLED, commit=False)
    _db.session.commit()
    yield cases
    app.config["BOARD_COLUMN_LIMIT"] = 25


def test_board_columns_keep_their_order_and_show_more_continues(client, login, mixed):
    expected = _expected(mixed)
    assert len(expected[Status.SENT]) > 2 * LIMIT  # several show-more pages
    assert all(len(ids) > LIMIT for ids in expected.values())
    login()
    page = client.get("/").get_data(as_text=True)
    for status in (Status.DRAFT, Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION, Status.DISPATCHED,
                   Status.RECEIVED, Status.FITTED, Status.ON_HOLD, Status.RESCAN):
        want = expected.get(status, [])
        first, whole = _walk_column(client, page, status)
        assert first == want[:LIMIT], status
        assert whole == want, status  # no gap, no repeat, same order page after page
        count = re.search(r'<span class="count" title="(\d+) cases">', _column_html(page, status)).group(1)
        assert int(count) == len(want), status


def test_filtered_board_keeps_the_order_and_show_more_keeps_the_filter(client, login, world, mixed):
    manual = world.labs["manual"]
    expected = _expected(mixed, lab_id=manual.id)
    login()
    page = client.hx(f"/?lab={manual.id}", target="board-columns").get_data(as_text=True)
    for status in (Status.SENT, Status.IN_PRODUCTION, Status.ON_HOLD, Status.DRAFT):
        want = expected.get(status, [])
        first, whole = _walk_column(client, page, status)
        assert first == want[:LIMIT] and whole == want, status


def test_cases_without_a_due_date_come_last_even_past_a_page(app, client, login, world):
    """More undated cases than a page: the dated ones come first, then the undated by id."""
    app.config["BOARD_COLUMN_LIMIT"] = LIMIT
    try:
        today = dt.date.today()
        cases = []
        for n in range(2 * LIMIT + 2):
            case = factories.case(world, Status.SENT, commit=False)
            case.due_date = None if n % 4 != 3 else today + dt.timedelta(days=n)
            cases.append(case)
        _db.session.commit()
        login()
        first, whole = _walk_column(client, client.get("/").get_data(as_text=True), Status.SENT)
        want = _expected(cases)[Status.SENT]
        assert first == want[:LIMIT] and whole == want
        assert [c.id for c in cases if c.due_date is not None] == want[:2]
    finally:
        app.config["BOARD_COLUMN_LIMIT"] = 25


@pytest.mark.parametrize("due", ["overdue", "today", "week", "fortnight"])
def test_due_windows_keep_the_order_and_their_columns(client, login, mixed, due):
    """A due window shows only work still to come back (and drafts, except for Overdue), in the
    same order, its show-more pages too; the other columns are empty."""
    today = dt.date.today()
    statuses = Status.awaiting_lab() | (set() if due == "overdue" else {Status.DRAFT})
    last = {"week": 7, "fortnight": 14}.get(due, 0)

    def shown(case):
        expected = case.lab_eta or case.due_date
        if case.status not in statuses or expected is None:
            return False
        if due == "overdue":
            return expected < today
        return expected == today if due == "today" else expected <= today + dt.timedelta(days=last)

    expected = _expected([c for c in mixed if shown(c)])
    assert expected  # the window holds some of the cases
    login()
    page = client.hx(f"/?due={due}", target="board-columns").get_data(as_text=True)
    for status in (Status.DRAFT, Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION, Status.DISPATCHED,
                   Status.RECEIVED, Status.FITTED, Status.ON_HOLD, Status.RESCAN):
        want = expected.get(status, [])
        first, whole = _walk_column(client, page, status)
        assert first == want[:LIMIT] and whole == want, (due, status)
    assert client.hx(f"/board/column/fitted?offset=0&due={due}").get_data(as_text=True).count("data-case-id") == 0


@pytest.fixture()
def seated(app, world):
    """Sent and draft cases with seat appointments out of id and due-date order, some without a
    seat, one without a lab; created at times out of id order."""
    app.config["BOARD_COLUMN_LIMIT"] = LIMIT
    today = dt.date.today()
    seats = [9, None, 3, 12, 3, None, 1, 20, None, 6]
    dues = [2, 4, None, 1, 8, 3, 3, None, 5, 2]
    ages = [3, 1, 8, 2, 8, 5, 0, 9, 4, 6]  # days old
    cases = []
    for n, (seat, due, age) in enumerate(zip(seats, dues, ages)):
        patient = factories.patient(world.practice, first=f"P{n}")
        case = factories.case(world, Status.SENT if n % 3 else Status.DRAFT, patient_obj=patient,
                              seat=today + dt.timedelta(days=seat) if seat is not None else None, commit=False)
        case.due_date = today + dt.timedelta(days=due) if due is not None else None
        case.created_at = dt.datetime.now() - dt.timedelta(days=age, hours=n)
        cases.append(case)
    cases[0].lab_id = None
    _db.session.commit()
    yield cases
    app.config["BOARD_COLUMN_LIMIT"] = 25


def _by(cases, key) -> dict[Status, list[int]]:
    by_status: dict[Status, list] = {}
    for c in cases:
        by_status.setdefault(c.status, []).append(c)
    return {s: [c.id for c in sorted(cs, key=key)] for s, cs in by_status.items()}


def _due_key(c):
    return (c.due_date is None, c.due_date or dt.date.min, c.id)


@pytest.mark.parametrize("sort", ["seat", "age"])
def test_columns_sort_by_seat_date_or_age_and_show_more_follows(client, login, seated, sort):
    key = {"seat": lambda c: (c.seat_date is None, c.seat_date or dt.date.min, *_due_key(c)),
           "age": lambda c: (c.created_at, c.id)}[sort]
    expected = _by(seated, key)
    login()
    page = client.get(f"/?sort={sort}").get_data(as_text=True)
    assert f'<option value="{sort}" selected>' in page
    for status in (Status.DRAFT, Status.SENT):
        first, whole = _walk_column(client, page, status)
        assert first == expected[status][:LIMIT] and whole == expected[status], (status, sort)
        assert whole != _by(seated, _due_key)[status]  # a different order from the default one


def test_the_no_lab_filter_shows_only_cases_without_a_lab(client, login, seated):
    login()
    body = client.hx("/?lab=none", target="board-columns").get_data(as_text=True)
    assert [int(i) for i in CARD_ID.findall(body)] == [seated[0].id]
    page = client.get("/?lab=none").get_data(as_text=True)
    assert '<option value="none" selected>No lab yet</option>' in page
