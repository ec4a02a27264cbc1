"""The figures computed in the database against a Python reference, on random histories.

The reference here is independent of portal/reports/sql.py: it reads the cases as ORM objects,
counts their business days with stats.business_days_between and the practice's closed days as
they stand, and hands them to services.summarise (the Python report the pages used before).
Both percentile paths run where they can: the window path on SQLite and PostgreSQL,
percentile_cont on PostgreSQL.
"""
from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from portal.audit.actor import Actor
from portal.cases import lifecycle
from portal.cases.catalog import REMAKE_PAYERS, REMAKE_REASONS
from portal.cases.lifecycle import Status
from portal.cases.models import CaseItem, LabCase
from portal.cases.services import CaseData, ItemData, remake, update_case
from portal.extensions import db
from portal.practices.models import PracticeClosure
from portal.reports import services, sql
from portal.reports.services import CaseFacts, Drill, RemakeFacts, ReportFilters
from portal.reports.stats import business_days_between
from tests import factories
from tests.reports.conftest import at, made

TODAY = dt.date(2031, 5, 15)
RANGE = ReportFilters(dt.date(2031, 3, 1), dt.date(2031, 4, 30))
FIELDS = ("cases", "dispatch_median", "dispatch_p90", "dispatch_count", "receive_median", "receive_p90",
          "receive_count", "due_on_time", "due_known", "seat_on_time", "seat_known", "remade", "fees_total",
          "fees_count", "fees_average")


def _paths():
    return ["window", "cont"] if db.engine.dialect.name == "postgresql" else ["window"]


def _day(rng: random.Random, start: dt.date, span: int) -> dt.date:
    return start + dt.timedelta(days=rng.randrange(span))


def random_history(world, rng: random.Random, n: int = 60) -> None:
    """n cases at three labs and two practices, sent around the range, with random turnaround,
    due dates, seats, fees, services, holds, rescans and remakes; closed days before and after."""
    labs = [world.labs["email"], world.labs["api"], world.labs["manual"]]
    coordinator = Actor.user(world.users["coordinator"])
    days = {p.id: rng.sample(range(80), 4) for p in (world.practice, world.other_practice)}
    for practice_id, offsets in days.items():
        for offset in offsets[:3]:
            db.session.add(PracticeClosure(practice_id=practice_id, day=dt.date(2031, 2, 20) + dt.timedelta(offset)))
        db.session.flush()
    db.session.info.pop("closed_days", None)
    for i in range(n):
        practice = world.practice if rng.random() < .75 else world.other_practice
        lab = rng.choice(labs)
        sent = _day(rng, dt.date(2031, 2, 20), 75)
        dispatched = sent + dt.timedelta(days=rng.randrange(0, 14)) if rng.random() < .85 else None
        received = dispatched + dt.timedelta(days=rng.randrange(0, 5)) if dispatched and rng.random() < .85 else None
        due = sent + dt.timedelta(days=rng.randrange(2, 16)) if rng.random() < .8 else None
        seat = sent + dt.timedelta(days=rng.randrange(3, 30)) if rng.random() < .7 else None
        fee = str(Decimal(rng.randrange(0, 90000)) / 100) if rng.random() < .8 else None
        restorations = rng.sample(["crown", "bridge", "night_guard", "denture"], rng.choice([1, 1, 1, 2]))
        case = made(world, lab, None, due=due and due.isoformat(), seat=seat and seat.isoformat(), fee=fee,
                    restorations=restorations, practice=practice)
        actor = Actor.user(world.users["coordinator"])
        lifecycle.move(case, Status.SENT, actor=actor, now=at(sent.isoformat(), 9))
        if rng.random() < .1:  # a rescan and a resend: the clock starts again
            sent = sent + dt.timedelta(days=rng.randrange(0, 3))
            lifecycle.move(case, Status.RESCAN, actor=Actor.lab(lab), reason="blurry", now=at(sent.isoformat(), 10))
            lifecycle.move(case, Status.SENT, actor=actor, now=at(sent.isoformat(), 12))
            dispatched = dispatched and max(dispatched, sent)
            received = received and max(received, dispatched)
        if dispatched:
            lifecycle.move(case, Status.DISPATCHED, actor=Actor.lab(lab), now=at(dispatched.isoformat(), 15))
        if received:
            lifecycle.move(case, Status.RECEIVED, actor=actor, now=at(received.isoformat(), 11))
        if received and rng.random() < .25:
            redo = remake(case, coordinator, rng.choice(list(REMAKE_REASONS)), rng.choice(list(REMAKE_PAYERS)), "")
            if rng.random() < .3:
                lifecycle.move(redo, Status.CANCELLED, actor=coordinator, reason="by mistake")
            elif rng.random() < .5:
                lifecycle.move(redo, Status.SENT, actor=coordinator, now=at(received.isoformat(), 16))
            if rng.random() < .3:  # a second remake: the first one speaks for the case
                remake(case, coordinator, rng.choice(list(REMAKE_REASONS)), rng.choice(list(REMAKE_PAYERS)), "")
        if not received and rng.random() < .1:
            lifecycle.move(case, Status.CANCELLED, actor=coordinator, reason="patient left")
    db.session.commit()
    # Closed days added and removed after the cases: the stored spans follow.
    for practice_id, offsets in days.items():
        db.session.add(PracticeClosure(practice_id=practice_id, day=dt.date(2031, 2, 20) + dt.timedelta(offsets[3])))
        db.session.flush()
    gone = db.session.scalars(select(PracticeClosure).where(PracticeClosure.practice_id == world.practice.id)
                              .order_by(PracticeClosure.id)).first()
    db.session.delete(gone)
    db.session.commit()


def _on_time(received, deadline, today):
    if deadline is None:
        return None
    if received is not None:
        return received.date() <= deadline
    return False if today > deadline else None


def reference_cases(practice_ids: set[int], filters: ReportFilters, today: dt.date) -> list[CaseFacts]:
    """The report's cases counted in Python from the ORM objects."""
    start = dt.datetime.combine(filters.date_from, dt.time())
    end = dt.datetime.combine(filters.date_to + dt.timedelta(days=1), dt.time())
    closed: dict[int, set] = {}
    for closure in db.session.scalars(select(PracticeClosure)):
        closed.setdefault(closure.practice_id, set()).add(closure.day)
    everything = list(db.session.scalars(select(LabCase).order_by(LabCase.sent_at, LabCase.id)))
    remakes: dict[int, LabCase] = {}
    for c in sorted(everything, key=lambda c: c.id):
        if c.remake_of_id and c.status is not Status.CANCELLED:
            remakes.setdefault(c.remake_of_id, c)
    found = []
    for c in everything:
        if (c.practice_id not in practice_ids or c.sent_at is None or not start <= c.sent_at < end
                or c.status is Status.CANCELLED or (filters.lab_id and c.lab_id != filters.lab_id)
                or (filters.service and filters.service not in {i.restoration for i in c.items})):
            continue
        days_off = closed.get(c.practice_id, set())
        r = remakes.get(c.id)
        found.append(CaseFacts(
            id=c.id, number=c.number, patient="", lab_id=c.lab_id, lab_name=c.lab.name if c.lab else services.NO_LAB,
            status=c.status, sent_at=c.sent_at, dispatched_at=c.dispatched_at, received_at=c.received_at,
            due_date=c.due_date, seat_date=c.seat_date, fee=c.fee, remake_of_id=c.remake_of_id,
            services=tuple(sorted({i.restoration for i in c.items}, key=services._service_order)),
            remake=RemakeFacts(r.id, r.number, r.remake_reason, r.remake_payer) if r else None,
            to_dispatch=business_days_between(c.sent_at.date(), c.dispatched_at.date(), days_off)
            if c.dispatched_at else None,
            to_receive=business_days_between(c.sent_at.date(), c.received_at.date(), days_off)
            if c.received_at else None,
            on_time_due=_on_time(c.received_at, c.due_date, today),
            on_time_seat=_on_time(c.received_at, c.seat_date, today),
            practice_id=c.practice_id))
    return found


def _values(f) -> tuple:
    return tuple(pytest.approx(v, rel=1e-12, abs=1e-12) if isinstance(v, float) else v
                 for v in (getattr(f, name) for name in FIELDS))


def assert_same_report(got, want) -> None:
    assert _values(got.total) == _values(want.total)
    for table in ("by_lab", "by_service", "by_month"):
        assert [f.label for f in getattr(got, table)] == [f.label for f in getattr(want, table)], table
        for g, w in zip(getattr(got, table), getattr(want, table), strict=True):
            assert _values(g) == _values(w), (table, g.label)
            assert g.link == w.link
    assert [(r.reason, r.count, r.by_payer) for r in got.remakes] == [
        (r.reason, r.count, r.by_payer) for r in want.remakes]
    assert [r.share for r in got.remakes] == pytest.approx([r.share for r in want.remakes])


FILTERS = [
    RANGE,
    ReportFilters(dt.date(2031, 2, 1), dt.date(2031, 5, 15)),
    ReportFilters(dt.date(2031, 3, 10), dt.date(2031, 3, 24)),
    ReportFilters(RANGE.date_from, RANGE.date_to, service="crown"),
]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sql_figures_equal_the_python_reference_on_random_histories(world, seed):
    random_history(world, random.Random(seed))
    for filters in [*FILTERS, ReportFilters(RANGE.date_from, RANGE.date_to, lab_id=world.labs["api"].id)]:
        want = services.summarise(reference_cases({world.practice.id}, filters, TODAY), filters)
        assert want.total.cases > 0 or filters.date_to < RANGE.date_to
        for path in _paths():
            got = services.build_report(world.practice.id, filters, TODAY, percentiles=path)
            assert_same_report(got, want)


@pytest.mark.parametrize("seed", [4, 5])
def test_the_organisation_view_equals_the_reference_per_practice_and_in_all(world, seed):
    random_history(world, random.Random(seed))
    practices = [world.practice, world.other_practice]
    for path in _paths():
        org = services.build_organisation_report(world.org.id, practices, RANGE, TODAY, percentiles=path)
        everyone = reference_cases({p.id for p in practices}, RANGE, TODAY)
        assert_same_report(org.report, services.summarise(everyone, RANGE))
        for practice, got in zip(practices, org.practices, strict=True):
            mine = [c for c in everyone if c.practice_id == practice.id]
            want = services.summarise(mine, RANGE)
            assert got.label == practice.name and _values(got) == _values(want.total)
            assert [f.label for f in org.practice_labs[practice.id]] == [f.label for f in want.by_lab]
            for g, w in zip(org.practice_labs[practice.id], want.by_lab, strict=True):
                assert _values(g) == _values(w), (practice.name, g.label)


def test_the_cases_behind_each_figure_are_the_references(world):
    random_history(world, random.Random(7))
    want = reference_cases({world.practice.id}, RANGE, TODAY)
    drills = [Drill(), Drill(month="2031-04"), Drill(show="late_due"), Drill(show="late_seat"), Drill(show="remade"),
              Drill(reason="fit"), Drill(payer="lab"), Drill(month="2031-03", show="late_due")]
    for drill in drills:
        expected = [c.number for c in services.select_cases(want, drill)]
        got = services.load_cases(world.practice.id, RANGE, TODAY, drill)
        assert [c.number for c in got] == expected, drill
        for g, w in zip(got, services.select_cases(want, drill), strict=True):
            assert (g.to_dispatch, g.to_receive, g.on_time_due, g.on_time_seat, g.services) == (
                w.to_dispatch, w.to_receive, w.on_time_due, w.on_time_seat, w.services), g.number
            assert (g.remake and g.remake.number) == (w.remake and w.remake.number)
        # paged: the pages put together are the whole list, and each says how many there are in all
        pages, offset = [], 0
        while True:
            page, total = services.load_page(world.practice.id, RANGE, TODAY, drill, limit=7, offset=offset)
            if not page:
                break
            assert total == len(expected)
            pages += [c.number for c in page]
            offset += 7
        assert pages == expected


def test_window_percentiles_match_stats_percentile_on_random_lists(world):
    """The counts-and-window path on its own, against stats.percentile, for lists of every shape:
    one value, two, ties, gaps, long tails."""
    from portal.reports.stats import percentile

    rng = random.Random(11)
    lab = world.labs["email"]
    groups = {}
    for month in (3, 4):
        values = [rng.choice([0, 1, 1, 2, 5, 9, 30]) for _ in range(rng.randrange(1, 25))]
        groups[f"2031-{month:02d}"] = values
        for n, days in enumerate(values):
            made(world, lab, f"2031-{month:02d}-{3 + n % 20:02d}")
            case = db.session.scalars(select(LabCase).order_by(LabCase.id.desc())).first()
            case.sent_to_received_bdays = days  # the stored span is what the report reads
    db.session.commit()
    found = sql.figures(world.practice.id, RANGE, TODAY, percentiles="window")
    for month, values in groups.items():
        group = found[("month", None, month)]
        assert group.receive_median == pytest.approx(percentile(values, .5), abs=1e-12)
        assert group.receive_p90 == pytest.approx(percentile(values, .9), abs=1e-12)


def test_a_closed_day_added_or_removed_moves_the_stored_spans(world):
    """Sent Mon 3 Mar, dispatched Fri 7, received Mon 10: 4 and 5 business days."""
    case = made(world, world.labs["email"], "2031-03-03", "2031-03-07", "2031-03-10")
    db.session.commit()
    assert (case.sent_to_dispatched_bdays, case.sent_to_received_bdays) == (4, 5)
    other = factories.practice(world.org, "Elsewhere")
    db.session.add_all([PracticeClosure(practice_id=world.practice.id, day=dt.date(2031, 3, 5)),  # Wed: inside
                        PracticeClosure(practice_id=world.practice.id, day=dt.date(2031, 3, 8)),  # Sat: nothing
                        PracticeClosure(practice_id=world.practice.id, day=dt.date(2031, 3, 10)),  # Mon: receive only
                        PracticeClosure(practice_id=other.id, day=dt.date(2031, 3, 6))])  # another practice's
    db.session.commit()
    assert (case.sent_to_dispatched_bdays, case.sent_to_received_bdays) == (3, 3)
    wednesday = db.session.scalar(select(PracticeClosure).where(PracticeClosure.day == dt.date(2031, 3, 5)))
    wednesday.day = dt.date(2031, 3, 3)  # moved to the day of the send: outside the span
    db.session.commit()
    assert (case.sent_to_dispatched_bdays, case.sent_to_received_bdays) == (4, 4)
    db.session.delete(db.session.scalar(select(PracticeClosure).where(PracticeClosure.day == dt.date(2031, 3, 10))))
    db.session.commit()
    assert (case.sent_to_dispatched_bdays, case.sent_to_received_bdays) == (4, 5)


def test_the_lifecycle_stores_the_spans_as_it_stamps_the_dates(world):
    db.session.add(PracticeClosure(practice_id=world.practice.id, day=dt.date(2031, 3, 4)))
    db.session.commit()
    case = made(world, world.labs["email"], "2031-03-03")
    assert (case.sent_to_dispatched_bdays, case.sent_to_received_bdays) == (None, None)
    lifecycle.move(case, Status.DISPATCHED, actor=Actor.lab(world.labs["email"]), now=at("2031-03-07", 15))
    assert (case.sent_to_dispatched_bdays, case.sent_to_received_bdays) == (3, None)  # Tue 4 is closed
    lifecycle.move(case, Status.RECEIVED, actor=Actor.user(world.users["coordinator"]), now=at("2031-03-10"))
    assert (case.sent_to_dispatched_bdays, case.sent_to_received_bdays) == (3, 4)


def test_postgresql_connections_do_not_jit_compile(world):
    """The reports' statement is estimated far above its size, which made PostgreSQL JIT-compile
    it: compiling took longer than running it (bench/README.md). Every connection turns JIT off."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("JIT is PostgreSQL's")
    assert db.session.scalar(text("SHOW jit")) == "off"


def _stored(case) -> list[str]:
    """The case's restorations as the database holds them."""
    db.session.expire_all()
    return json.loads(db.session.scalar(select(LabCase.restorations).where(LabCase.id == case.id)))


def test_a_cases_stored_restorations_follow_its_items(world):
    """LabCase.restorations (what the figures group services by) is kept by every flush that adds,
    changes or removes an item, whichever way: the case form, a remake, the ORM directly."""
    case = made(world, world.labs["email"], None, restorations=("night_guard", "crown", "crown"))
    db.session.commit()
    assert _stored(case) == ["crown", "night_guard"]
    items = [ItemData(teeth=["11"], restoration="bridge", material="zirconia")]
    update_case(case, CaseData(patient_id=case.patient_id, provider_id=case.provider_id, lab_id=case.lab_id,
                               items=items), Actor.user(world.users["coordinator"]))
    db.session.commit()
    assert _stored(case) == ["bridge"]
    item = db.session.scalars(select(CaseItem).where(CaseItem.case_id == case.id)).one()
    item.restoration = "denture"  # the item alone, its case not loaded with it
    db.session.commit()
    assert _stored(case) == ["denture"]
    db.session.add(CaseItem(case_id=case.id, position=1, restoration="crown"))
    db.session.commit()
    assert _stored(case) == ["crown", "denture"]
    db.session.delete(db.session.scalars(select(CaseItem).where(CaseItem.case_id == case.id,
                                                                CaseItem.position == 0)).one())
    db.session.commit()
    assert _stored(case) == ["crown"]
    sent = made(world, world.labs["email"], "2031-03-03", "2031-03-07", "2031-03-10", restorations=("implant_crown",))
    redo = remake(sent, Actor.user(world.users["coordinator"]), "fit", "lab", "")
    db.session.commit()
    assert _stored(redo) == ["implant_crown"]
