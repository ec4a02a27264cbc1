"""Bench: the managers' reports computed in the database, beside a bare Flask route in the same app.

Seeds, with bulk inserts (SQLite: executemany; PostgreSQL: COPY), sent cases over the last twelve
months with the figures' ingredients (dispatch and check-in with their stored business days,
due dates, seat appointments, fees, two services on some, remakes, a few closed days):

  small   one practice, 10,000 cases           (the statement counts at a tenth of the size)
  single  one practice, 100,000 cases          the practice's report
  dso     50 practices, 1,000,000 cases        the DSO view (PostgreSQL; --dso-cases to change)

then signs a manager in (an organisation manager for the DSO view) and times, interleaved in one
run, with twelve months as the range:

  bare     GET /bare                          a route that returns "ok"
  report   GET /reports/?from=..&to=..        the practice's report (small and single)
  cases    GET /reports/cases?...&show=late_due   the first page of a click-through list
  dso      GET /reports/organisation?...      the DSO view (dso; on SQLite the single practice)

Targets: the report over 100,000 cases at most 0.3 s on PostgreSQL and 0.6 s on SQLite; the DSO
view over 1,000,000 cases across 50 practices at most 2 s on PostgreSQL; the statement count of
each route the same at every size.

    .venv/bin/python bench/reports.py                                    # SQLite (temporary file)
    .venv/bin/python bench/reports.py --pg postgresql://postgres@127.0.0.1:5432/lm_reports_bench
    .venv/bin/python bench/reports.py --pg URL --reuse                    # time what an earlier run seeded

--pg drops and recreates every table of that database (use a scratch database); --reuse skips
seeding when the tables already hold the same sizes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "bench password, not secret"
TODAY = dt.date.today()
START = TODAY - dt.timedelta(days=365)
RESTORATIONS = ["crown", "crown", "crown", "bridge", "night_guard", "denture", "implant_crown"]
REASONS, PAYERS = ["fit", "shade", "design", "damaged"], ["practice", "lab"]


def make_app(url: str):
    from portal import create_app

    app = create_app({
        "SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": url, "RATELIMIT_ENABLED": False,
        "RATELIMIT_STORAGE_URI": "memory://", "REDIS_URL": "", "SESSION_COOKIE_SECURE": False,
        "MAIL_BACKEND": "devmailbox", "DEVELOPMENT": False,
    })

    @app.get("/bare")
    def bare():
        return "ok"

    return app


# -- bulk loading --------------------------------------------------------------------------------------

def _column_defaults(table) -> dict:
    """The Python-side defaults of a table's columns (COPY and executemany skip them)."""
    found = {}
    for column in table.columns:
        default = column.default
        if default is None or column.primary_key:
            continue
        if default.is_scalar:
            found[column.name] = default.arg
        elif default.is_callable:
            found[column.name] = default.arg(None)
    return found


def _db_value(value, dialect: str):
    import enum

    if isinstance(value, enum.Enum):
        return value.name  # non-native enums store the member's name
    if dialect == "sqlite":
        if isinstance(value, dt.datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, Decimal):
            return float(value)
        if isinstance(value, bool):
            return int(value)
    return value


class Loader:
    """Rows into a table as fast as the database takes them, ids assigned here."""

    def __init__(self, db):
        self.db = db
        self.dialect = db.engine.dialect.name
        self.next_id: dict[str, int] = {}

    def ids(self, table, n: int) -> range:
        start = self.next_id.get(table.name, 1)
        self.next_id[table.name] = start + n
        return range(start, start + n)

    def load(self, table, rows: list[dict]) -> None:
        if not rows:
            return
        defaults = _column_defaults(table)
        given = set().union(*rows)  # every row's keys: a remake's remake_of_id is not in a first case's row
        names = [c.name for c in table.columns if c.name in given or c.name in defaults]
        conn = self.db.session.connection().connection.dbapi_connection
        values = ([_db_value(row.get(name, defaults.get(name)), self.dialect) for name in names] for row in rows)
        quoted = ", ".join(f'"{n}"' for n in names)
        if self.dialect == "postgresql":
            with conn.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
                for row in values:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in names)
            conn.executemany(f'INSERT INTO "{table.name}" ({quoted}) VALUES ({marks})', values)

    def finish(self) -> None:
        from sqlalchemy import text

        if self.dialect == "postgresql":
            for table in self.next_id:
                self.db.session.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), (SELECT max(id) FROM \"{table}\"))"))
        self.db.session.commit()
        if self.dialect == "postgresql":
            # what autovacuum does soon after a bulk load: statistics, and the visibility map that
            # lets an index-only scan skip the table
            with self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))


# -- the data --------------------------------------------------------------------------------------------

def seed_organisation(loader: Loader, name: str, practices: int, cases: int, rng: random.Random) -> dict:
    """An organisation with `practices` practices, five labs and `cases` sent cases spread over
    them; a manager who is also an organisation manager. Returns the manager's email."""
    from portal.auth.passwords import hash_password
    from portal.cases.lifecycle import Status
    from portal.cases.models import CaseItem, LabCase, restorations_of
    from portal.labs.models import Channel, Lab
    from portal.people.models import Appointment, AppointmentKind, Patient, Provider
    from portal.practices.models import (
        Membership, Organization, OrganizationMembership, OrganizationRole, Practice, PracticeClosure, Role, User,
    )
    from portal.reports.stats import business_days_between

    [org_id] = loader.ids(Organization.__table__, 1)
    loader.load(Organization.__table__, [{"id": org_id, "name": name}])
    practice_ids = list(loader.ids(Practice.__table__, practices))
    loader.load(Practice.__table__, [{"id": pid, "organization_id": org_id, "name": f"{name} practice {n + 1:02d}"}
                                     for n, pid in enumerate(practice_ids)])
    lab_ids = list(loader.ids(Lab.__table__, 5))
    loader.load(Lab.__table__, [{"id": lid, "organization_id": org_id, "name": f"{name} lab {n + 1}",
                                 "channel": Channel.EMAIL, "email": f"lab{lid}@bench.test"}
                                for n, lid in enumerate(lab_ids)])
    closed = {}
    closures = []
    for pid in practice_ids:
        days = {START + dt.timedelta(days=rng.randrange(365)) for _ in range(6)}
        closed[pid] = days
        closures += [{"id": i, "practice_id": pid, "day": d} for i, d in
                     zip(loader.ids(PracticeClosure.__table__, len(days)), sorted(days), strict=True)]
    loader.load(PracticeClosure.__table__, closures)
    providers = {pid: i for pid, i in zip(practice_ids, loader.ids(Provider.__table__, practices), strict=True)}
    loader.load(Provider.__table__, [{"id": i, "practice_id": pid, "abbr": "DR", "name": "Dr. Bench"}
                                     for pid, i in providers.items()])
    [user_id] = loader.ids(User.__table__, 1)
    email = f"manager-{org_id}@bench.test"
    loader.load(User.__table__, [{"id": user_id, "email": email, "name": "Manager",
                                  "password_hash": hash_password(PASSWORD)}])
    loader.load(Membership.__table__, [{"id": i, "user_id": user_id, "practice_id": pid, "role": Role.MANAGER}
                                       for i, pid in zip(loader.ids(Membership.__table__, practices), practice_ids,
                                                         strict=True)])
    loader.load(OrganizationMembership.__table__, [{"id": loader.ids(OrganizationMembership.__table__, 1)[0],
                                                    "user_id": user_id, "organization_id": org_id,
                                                    "role": OrganizationRole.MANAGER}])
    patients_per_practice = max(cases // practices // 4, 10)
    patients = {}
    rows = []
    for pid in practice_ids:
        ids = list(loader.ids(Patient.__table__, patients_per_practice))
        patients[pid] = ids
        rows += [{"id": i, "practice_id": pid, "chart_number": f"C{i}", "first_name": f"First{i}",
                  "last_name": f"Last{i}"} for i in ids]
    loader.load(Patient.__table__, rows)
    del rows

    case_ids = iter(loader.ids(LabCase.__table__, cases + cases // 20))
    appt_ids = iter(loader.ids(Appointment.__table__, cases))
    item_ids = iter(loader.ids(CaseItem.__table__, 2 * cases + cases // 10))
    chunk = 50_000
    made = 0
    while made < cases:
        batch, appts, items, remakes = [], [], [], []
        for _ in range(min(chunk, cases - made)):
            made += 1
            pid = practice_ids[made % practices]
            case_id = next(case_ids)
            sent_day = START + dt.timedelta(days=rng.randrange(365))
            while sent_day.weekday() >= 5:
                sent_day += dt.timedelta(days=1)
            sent = dt.datetime.combine(sent_day, dt.time(8 + rng.randrange(9), rng.randrange(60)))
            lab = lab_ids[(made * 7 + made // practices) % 5]
            dispatched = received = None
            if sent_day + dt.timedelta(days=20) < TODAY or rng.random() < .7:
                dispatched = sent + dt.timedelta(days=rng.choice([3, 4, 5, 6, 7, 8, 10, 14]) + lab_ids.index(lab),
                                                 hours=4)
                if dispatched.date() >= TODAY:
                    dispatched = None
            if dispatched and rng.random() < .92:
                received = dispatched + dt.timedelta(days=rng.choice([1, 1, 2, 3]), hours=-2)
                if received.date() >= TODAY:
                    received = None
            status = (Status.FITTED if received and rng.random() < .8 else Status.RECEIVED if received
                      else Status.DISPATCHED if dispatched else Status.IN_PRODUCTION)
            if rng.random() < .02:
                status = Status.CANCELLED
            seat = None
            if rng.random() < .6:
                seat = next(appt_ids)
                appts.append({"id": seat, "practice_id": pid, "patient_id": rng.choice(patients[pid]),
                              "starts_at": sent + dt.timedelta(days=rng.randrange(7, 21)),
                              "kind": AppointmentKind.SEAT})
            days_off = closed[pid]
            batch.append({
                "id": case_id, "number": f"LC-B{case_id:09d}", "practice_id": pid,
                "patient_id": rng.choice(patients[pid]), "provider_id": providers[pid], "lab_id": lab,
                "seat_appointment_id": seat, "status": status,
                "due_date": sent_day + dt.timedelta(days=rng.choice([7, 9, 10, 14])),
                "fee": Decimal(rng.choice([90, 180, 200, 250, 500, 1200])) if rng.random() < .9 else None,
                "sent_at": sent, "dispatched_at": dispatched, "received_at": received,
                "sent_to_dispatched_bdays":
                    business_days_between(sent_day, dispatched.date(), days_off) if dispatched else None,
                "sent_to_received_bdays":
                    business_days_between(sent_day, received.date(), days_off) if received else None,
            })
            codes = [rng.choice(RESTORATIONS)] + (["night_guard"] if rng.random() < .2 else [])
            items += [{"id": next(item_ids), "case_id": case_id, "position": n, "teeth": "11" if n == 0 else "",
                       "restoration": code, "material": "zirconia" if n == 0 else "hard acrylic"}
                      for n, code in enumerate(codes)]
            batch[-1]["restorations"] = restorations_of(codes)  # what a flush of these items keeps
            if received and rng.random() < .05:
                remakes.append({"id": next(case_ids), "number": f"LC-R{case_id:09d}", "practice_id": pid,
                                "patient_id": batch[-1]["patient_id"], "provider_id": providers[pid],
                                "lab_id": lab, "status": Status.DRAFT, "remake_of_id": case_id,
                                "remake_reason": rng.choice(REASONS), "remake_payer": rng.choice(PAYERS)})
        loader.load(Appointment.__table__, appts)
        loader.load(LabCase.__table__, batch + remakes)
        loader.load(CaseItem.__table__, items)
        print(f"  {name}: {made:,} cases", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return {"email": email, "organization_id": org_id, "practice_id": practice_ids[0]}


SHAPES = {"small": (1, 10_000), "single": (1, 100_000), "dso": (50, 1_000_000)}


def seed(app, shapes: dict[str, tuple[int, int]], reuse: bool) -> dict[str, dict]:
    from sqlalchemy import func, select

    from portal.cases.models import LabCase
    from portal.extensions import db
    from portal.practices.models import Organization, Practice, User

    with app.app_context():
        expected = sum(cases for _, cases in shapes.values())
        if reuse:
            try:
                sent = db.session.scalar(select(func.count()).select_from(LabCase).where(LabCase.sent_at.is_not(None)))
            except Exception:  # noqa: BLE001 - no tables yet
                db.session.rollback()
                sent = None
            if sent == expected:
                found = {}
                for label, org in zip(shapes, db.session.scalars(select(Organization).order_by(Organization.id)),
                                      strict=False):
                    first = db.session.scalar(select(Practice.id).where(Practice.organization_id == org.id)
                                              .order_by(Practice.id))
                    email = db.session.scalar(select(User.email).where(User.email == f"manager-{org.id}@bench.test"))
                    found[label] = {"email": email, "organization_id": org.id, "practice_id": first}
                print(f"reusing the {expected:,} cases already seeded", file=sys.stderr)
                return found
        db.drop_all()
        db.create_all()
        loader = Loader(db)
        found = {}
        started = time.perf_counter()
        for n, (label, (practices, cases)) in enumerate(shapes.items()):
            found[label] = seed_organisation(loader, label, practices, cases, random.Random(n))
        loader.finish()
        print(f"seeded {expected:,} sent cases in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        db.session.remove()
        return found


# -- timing -------------------------------------------------------------------------------------------

class StatementCounter:
    def __init__(self, engine):
        from sqlalchemy import event

        self.count = 0
        event.listen(engine, "before_cursor_execute", self._hit)

    def _hit(self, *args):
        self.count += 1


def sign_in(client, email: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    response = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]


def measure(app, seeded: dict[str, dict], targets: list[tuple[str, str, str]], runs: int) -> dict:
    from portal.extensions import db

    period = f"from={START.isoformat()}&to={TODAY.isoformat()}"
    clients = {}
    with app.app_context():
        counter = StatementCounter(db.engine)
    for label in {t[0] for t in targets}:
        client = app.test_client()
        sign_in(client, seeded[label]["email"])
        clients[label] = client
    urls = {"bare": "/bare", "report": f"/reports/?{period}", "cases": f"/reports/cases?{period}&show=late_due",
            "dso": f"/reports/organisation?{period}"}
    timings = {(label, route): [] for label, route, _ in targets}
    statements = {}
    for round_ in range(runs + 1):  # one warm-up round
        for label, route, _ in targets:
            before = counter.count
            start = time.perf_counter()
            response = clients[label].get(urls[route])
            elapsed = time.perf_counter() - start
            assert response.status_code == 200, (label, route, response.status_code,
                                                 response.get_data(as_text=True)[:300])
            if round_:
                timings[(label, route)].append(elapsed * 1000)
                statements[(label, route)] = counter.count - before
    return {key: {"median": statistics.median(t), "min": min(t), "max": max(t), "statements": statements[key]}
            for key, t in timings.items()}


def compare_paths(app, seeded: dict, runs: int) -> None:
    """The two percentile paths of portal/reports/sql.py on the same data, function calls timed
    (PostgreSQL: the counts-and-window default against percentile_cont over every case)."""
    from portal.extensions import db
    from portal.reports import services
    from portal.reports.services import OrganisationFilters

    filters = OrganisationFilters(START, TODAY)
    with app.app_context():
        for label, ids in seeded.items():
            practices = services.practice_choices(ids["organization_id"])
            for path in ("window", "cont"):
                took = []
                for _ in range(runs):
                    start = time.perf_counter()
                    services.build_organisation_report(ids["organization_id"], practices, filters, TODAY,
                                                       percentiles=path)
                    took.append((time.perf_counter() - start) * 1000)
                    db.session.rollback()
                print(f"  {label:<8} organisation figures, {path:<6} path: median {statistics.median(took):8.1f} ms "
                      f"(min {min(took):.1f}, {runs} runs, load average {os.getloadavg()[0]:.1f})")


def run(label: str, url: str, shapes: dict, targets: list, runs: int, reuse: bool, paths: bool = False) -> dict:
    from portal.extensions import db

    app = make_app(url)
    seeded = seed(app, shapes, reuse)
    load_before = os.getloadavg()[0]
    print(f"{label}: measuring {runs} rounds...", file=sys.stderr)
    try:
        results = measure(app, seeded, targets, runs)
        if paths:
            compare_paths(app, seeded, max(runs // 2, 2))
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    return {"results": results, "load": (load_before, os.getloadavg()[0])}


def report(label: str, shapes: dict, targets: list, outcome: dict) -> bool:
    results, (load_before, load_after) = outcome["results"], outcome["load"]
    print()
    print(f"{label}: load average {load_before:.1f} before, {load_after:.1f} after, {os.cpu_count()} CPUs "
          "(wall clock, in process, Flask's test client)")
    print(f"{'data':<8} {'cases':>10} {'practices':>9} {'route':<7} {'median ms':>10} {'min ms':>8} {'max ms':>8} "
          f"{'stmts':>6} {'x bare':>7}")
    ok = True
    for data, route, bare_of in targets:
        r = results[(data, route)]
        bare = results[(bare_of, "bare")]["median"]
        practices, cases = shapes[data]
        print(f"{data:<8} {cases:>10,} {practices:>9} {route:<7} {r['median']:>10.1f} {r['min']:>8.1f} "
              f"{r['max']:>8.1f} {r['statements']:>6} {r['median'] / bare:>7.0f}")
    print()
    limits = {"postgresql": {("single", "report"): 300, ("dso", "dso"): 2000},
              "sqlite": {("single", "report"): 600}}[label]
    for (data, route), limit in limits.items():
        if (data, route) not in results:
            continue
        median = results[(data, route)]["median"]
        passed = median <= limit
        ok &= passed
        practices, cases = shapes[data]
        print(f"{label}: {'PASS' if passed else 'MISS'}  {route} over {cases:,} cases in {practices} practice(s): "
              f"{median:.0f} ms by median (target <= {limit} ms)")
    for route in ("report", "cases", "dso"):
        counts = {data: results[(data, r)]["statements"] for data, r, _ in targets if r == route}
        if len(counts) > 1:
            passed = len(set(counts.values())) == 1
            ok &= passed
            print(f"{label}: {'PASS' if passed else 'MISS'}  {route} statements {counts} (target: flat)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed rounds (after one warm-up round)")
    parser.add_argument("--pg", metavar="URL", help="bench PostgreSQL in this (scratch) database instead of SQLite")
    parser.add_argument("--dso-cases", type=int, default=1_000_000, help="cases of the 50-practice organisation")
    parser.add_argument("--reuse", action="store_true", help="keep the rows an earlier run seeded (same sizes)")
    parser.add_argument("--sqlite-file", metavar="PATH", help="SQLite in this file (kept; with --reuse, reused)")
    parser.add_argument("--compare-paths", action="store_true",
                        help="PostgreSQL: also time percentile_cont against the default path")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (a quick try: 0.01)")
    args = parser.parse_args()
    SHAPES.update({k: (p, max(int(c * args.scale), p)) for k, (p, c) in SHAPES.items()})
    args.dso_cases = max(int(args.dso_cases * args.scale), 50)
    if args.pg:
        shapes = {**SHAPES, "dso": (50, args.dso_cases)}
        targets = [("small", "bare", "small"), ("small", "report", "small"), ("single", "report", "single"),
                   ("small", "cases", "small"), ("single", "cases", "single"), ("single", "dso", "single"),
                   ("dso", "bare", "dso"), ("dso", "dso", "dso"), ("single", "bare", "single")]
        outcome = run("postgresql", args.pg.replace("postgresql://", "postgresql+psycopg://", 1), shapes, targets,
                      args.runs, args.reuse, args.compare_paths)
        return 0 if report("postgresql", shapes, targets, outcome) else 1
    shapes = {"small": SHAPES["small"], "single": SHAPES["single"]}
    targets = [("small", "bare", "small"), ("small", "report", "small"), ("single", "report", "single"),
               ("small", "cases", "small"), ("single", "cases", "single"), ("small", "dso", "small"),
               ("single", "dso", "single"), ("single", "bare", "single")]
    if args.sqlite_file:
        outcome = run("sqlite", f"sqlite:///{Path(args.sqlite_file).resolve()}", shapes, targets, args.runs, args.reuse)
        return 0 if report("sqlite", shapes, targets, outcome) else 1
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run("sqlite", f"sqlite:///{tmp}/reports.sqlite3", shapes, targets, args.runs, False)
    return 0 if report("sqlite", shapes, targets, outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
