import datetime as dt

from sqlalchemy import event

from portal.cases.lifecycle import Status
from portal.extensions import db as _db
from tests import factories


class StatementCounter:
    def __init__(self, engine):
        self.engine, self.count = engine, 0

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._hit)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._hit)

    def _hit(self, *args):
        self.count += 1


def test_board_full_page_and_partial(client, login, world):
    case = factories.case(world, Status.SENT)
    login()
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<html" in html and 'id="filters"' in html
    assert f'data-case-number="{case.number}"' in html
    for status in ("draft", "sent", "acknowledged", "in_production", "dispatched", "received", "on_hold", "rescan"):
        assert f'class="column" data-status="{status}"' in html
    assert "HX-Request" in page.headers["Vary"]

    partial = client.hx("/?q=" + case.number, target="board-columns")
    body = partial.get_data(as_text=True)
    assert partial.status_code == 200
    assert "<html" not in body and body.lstrip().startswith('<div id="board-columns"')
    assert f'data-case-number="{case.number}"' in body


def test_board_filters_and_search(client, login, world):
    mine = factories.case(world, Status.SENT, patient_obj=factories.patient(world.practice, "Zed", "Quartz"))
    other = factories.case(world, Status.SENT, lab=world.labs["manual"])
    login()
    body = client.hx("/?q=quartz").get_data(as_text=True)
    assert mine.number in body and other.number not in body
    body = client.hx(f"/?lab={world.labs['manual'].id}").get_data(as_text=True)
    assert other.number in body and mine.number not in body


def test_board_statement_count_is_flat(app, client, login, world):
    login()

    def count_for(n_cases):
        for _ in range(n_cases):
            factories.case(world, Status.SENT, commit=False)
        _db.session.commit()
        with StatementCounter(_db.engine) as counter:
            assert client.get("/").status_code == 200
        return counter.count

    small = count_for(10)
    large = count_for(490)
    assert small == large, (small, large)


def test_idle_poll_is_empty_and_cheap(client, login, world):
    factories.case(world, Status.SENT)
    login()
    html = client.get("/").get_data(as_text=True)
    import re

    stamp = re.search(r'data-stamp="(\d+)"', html).group(1)
    with StatementCounter(_db.engine) as counter:
        idle = client.hx(f"/?since={stamp}", target="board-columns")
    assert idle.status_code == 204 and idle.data == b""
    assert counter.count <= 2  # the session's user, and the board's stamp

    factories.case(world, Status.DRAFT)  # someone else changes something
    changed = client.hx(f"/?since={stamp}", target="board-columns")
    assert changed.status_code == 200 and 'id="board-columns"' in changed.get_data(as_text=True)


def test_show_more_in_long_columns(app, client, login, world):
    app.config["BOARD_COLUMN_LIMIT"] = 3
    try:
        for _ in range(5):
            factories.case(world, Status.SENT, commit=False)
        _db.session.commit()
        login()
        html = client.get("/").get_data(as_text=True)
        sent = html.split('data-status="sent"', 1)[1].split("</section>", 1)[0]
        assert sent.count("data-case-number=") == 3 and "Show more (2)" in sent
        more = client.hx("/board/column/sent?offset=3").get_data(as_text=True)
        assert more.count("data-case-number=") == 2
    finally:
        app.config["BOARD_COLUMN_LIMIT"] = 25


def test_risk_list_explains_what_to_do(client, login, world):
    today = dt.date.today()
    risky = factories.case(world, Status.SENT, seat=today + dt.timedelta(days=2), due=today + dt.timedelta(days=5))
    factories.case(world, Status.SENT, seat=today + dt.timedelta(days=30), due=today + dt.timedelta(days=5))
    assert risky.seat_risk
    login()
    html = client.get("/risk").get_data(as_text=True)
    assert risky.number in html and "Chase the lab or move the appointment" in html
    board = client.get("/").get_data(as_text=True)
    assert "Seat risk" in board


def test_show_more_link_works_without_htmx(client, login, world):
    case = factories.case(world, Status.SENT)
    login()
    page = client.get("/board/column/sent?offset=0")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<html" in html and case.number in html
    assert client.get("/board/column/nonsense").status_code == 404


def test_day_view_groups_due_work_by_lab(client, login, world):
    today = dt.date.today()
    due_email = factories.case(world, Status.IN_PRODUCTION, due=today)
    due_manual = factories.case(world, Status.SENT, due=today, lab=world.labs["manual"])
    later = factories.case(world, Status.SENT, due=today + dt.timedelta(days=9))
    login()
    html = client.get(f"/day?date={today.isoformat()}").get_data(as_text=True)
    assert due_email.number in html and due_manual.number in html and later.number not in html
    assert html.index(world.labs["email"].name) < html.index(due_email.number)
    assert client.get("/day?date=not-a-date").status_code == 200
