"""Bench: the board page and its idle poll, beside a bare Flask route in the same app.

Seeds 500 and 5,000 open cases (spread over the board's statuses, three labs, a few hundred
patients, half with a seat appointment, plus some closed cases the board must skip), signs a
coordinator in with Flask's test client and times, interleaved in one run:

  bare   GET /bare                 a route that returns "ok" (same app, same session, same client)
  board  GET /                     the full board page
  poll   GET /?since=<stamp>       the idle htmx poll, answered 204

Targets: board with 500 open cases <= 25x bare; idle poll <= 2x bare; the number of SQL
statements the same at 500 and 5,000 cases; the board at 5,000 cases about as dear as at 500
(median at most 1.25x: it shows the same cards).

    .venv/bin/python bench/board.py [--runs 40] [--sizes 500,5000] [--pg postgresql://postgres@127.0.0.1/postgres]
    .venv/bin/python bench/board.py --profile      # pyinstrument profile of the board (pip install pyinstrument)

Each size has its own database (SQLite in a temporary file always; with --pg, also PostgreSQL in
scratch databases lm_bench_<random> created on that server, analysed after seeding, and dropped
afterwards), seeded first; then the sizes are timed in the same rounds, so load from elsewhere on
the machine weighs on every size alike and the ratios between sizes hold on a busy machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "bench password, not secret"
BOARD_STATUSES = ["draft", "sent", "acknowledged", "in_production", "dispatched", "received", "on_hold", "rescan"]
WEIGHTS = [8, 20, 15, 25, 12, 10, 5, 5]  # a plausible spread: most work is at the lab


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


def seed(open_cases: int, rng: random.Random) -> dict:
    """Bulk rows straight into the tables: the board only reads them. Returns a few ids."""
    from sqlalchemy import insert, text

    from portal.audit.actor import Actor
    from portal.audit.record import record
    from portal.auth.passwords import hash_password
    from portal.cases.lifecycle import Status
    from portal.cases.models import CaseItem, LabCase
    from portal.extensions import db
    from portal.labs.models import Channel, Lab, LabService
    from portal.people.models import Appointment, AppointmentKind, Patient, Provider
    from portal.practices.models import Membership, Organization, Practice, Role, User

    org = Organization(name="Bench DSO")
    db.session.add(org)
    db.session.flush()
    practice = Practice(organization_id=org.id, name="Bench Dental", tooth_numbering="fdi", phone="")
    db.session.add(practice)
    db.session.flush()
    labs = []
    for n, channel in enumerate([Channel.EMAIL, Channel.API, Channel.MANUAL]):
        lab = Lab(organization_id=org.id, name=f"Bench Lab {n}", channel=channel, email=f"lab{n}@bench.test")
        lab.services = [LabService(restoration="crown", materials="zirconia", turnaround_days=5)]
        db.session.add(lab)
        labs.append(lab)
    providers = [Provider(practice_id=practice.id, abbr=f"DR{n}", name=f"Dr. Bench {n}") for n in range(4)]
    db.session.add_all(providers)
    user = User(email="coordinator@bench.test", name="Coordinator", password_hash=hash_password(PASSWORD))
    db.session.add(user)
    db.session.flush()
    db.session.add(Membership(user_id=user.id, practice_id=practice.id, role=Role.COORDINATOR))

    n_patients = max(open_cases // 3, 10)
    db.session.execute(insert(Patient), [
        {"practice_id": practice.id, "chart_number": f"B{i:06d}", "first_name": f"First{i}",
         "last_name": f"Last{i}", "date_of_birth": dt.date(1960 + i % 40, 1 + i % 12, 1 + i % 28)}
        for i in range(n_patients)
    ])
    patient_ids = list(db.session.scalars(Patient.__table__.select().with_only_columns(Patient.id)))
    today = dt.date.today()

    total = open_cases + open_cases // 10  # plus closed cases the board must skip
    appts, cases = [], []
    for i in range(total):
        patient_id = rng.choice(patient_ids)
        if i < open_cases:
            status = rng.choices(BOARD_STATUSES, WEIGHTS)[0]
        else:
            status = rng.choice(["fitted", "cancelled"])
        due = today + dt.timedelta(days=rng.randint(-10, 30))
        seat = due + dt.timedelta(days=rng.randint(0, 10)) if i % 2 == 0 else None
        if seat:
            appts.append({"practice_id": practice.id, "patient_id": patient_id,
                          "starts_at": dt.datetime.combine(seat, dt.time(9 + i % 8, 0)),
                          "kind": AppointmentKind.SEAT})
        long_ago = dt.datetime.now() - dt.timedelta(days=60)
        cases.append({
            "number": f"LC-B-{i:06d}", "practice_id": practice.id, "patient_id": patient_id,
            "provider_id": providers[i % 4].id, "lab_id": labs[i % 3].id, "status": Status(status),
            "status_reason": "waiting for shade photo" if status in ("on_hold", "rescan") else "",
            "held_from": Status.SENT if status == "on_hold" else None,
            "due_date": due, "lab_eta": due + dt.timedelta(days=1) if i % 5 == 0 else None,
            "seat_risk": i % 7 == 0, "origin": ["manual", "itero", "medit", "3shape"][i % 4],
            "sent_at": long_ago if status != "draft" else None,
            "fitted_at": long_ago if status == "fitted" else None,
            "closed_at": long_ago if status in ("fitted", "cancelled") else None,
            "_seat": seat is not None,
        })
    if appts:
        db.session.execute(insert(Appointment), appts)
    appt_ids = iter(db.session.scalars(Appointment.__table__.select().with_only_columns(Appointment.id)
                                       .order_by(Appointment.id)))
    for c in cases:
        c["seat_appointment_id"] = next(appt_ids) if c.pop("_seat") else None
    for chunk in range(0, len(cases), 1000):
        db.session.execute(insert(LabCase), cases[chunk:chunk + 1000])
    case_ids = list(db.session.scalars(LabCase.__table__.select().with_only_columns(LabCase.id)))
    items = []
    for n, case_id in enumerate(case_ids):
        items.append({"case_id": case_id, "position": 0, "teeth": rng.choice(["11", "36", "14 15 16", "21"]),
                      "restoration": "crown", "material": "zirconia", "shade": "A2", "margin": "chamfer"})
        if n % 4 == 0:
            items.append({"case_id": case_id, "position": 1, "teeth": "46", "restoration": "night_guard",
                          "material": "hard acrylic"})
    for chunk in range(0, len(items), 2000):
        db.session.execute(insert(CaseItem), items[chunk:chunk + 2000])
    # Some history, so the poll's stamp (the newest audit row of the practice) is a real lookup.
    for case_id in case_ids[:200]:
        record("case.create", "lab_case", case_id, after={"bench": True}, actor=Actor.system("bench"),
               practice_id=practice.id)
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        # Table statistics, as autovacuum gathers soon after a bulk load on a real server. Without
        # them the planner takes each board column for a handful of rows and sorts it whole.
        db.session.execute(text("ANALYZE"))
        db.session.commit()
    return {"practice_id": practice.id, "user_email": user.email}


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


def measure(seeded: dict[int, tuple], runs: int, profile: bool = False) -> dict[int, dict]:
    """Times every size's routes in the same rounds (size after size, route after route), so a
    change in the machine's load during the run weighs on all sizes alike."""
    from portal.board.services import board_stamp
    from portal.extensions import db

    sizes = {}
    for size, (app, ids) in seeded.items():
        client = app.test_client()
        with app.app_context():
            stamp = board_stamp(ids["practice_id"])
            counter = StatementCounter(db.engine)
        sign_in(client, ids["user_email"])
        targets = {
            "bare": ("/bare", {}, 200),
            "board": ("/", {}, 200),
            "poll": (f"/?since={stamp}", {"HX-Request": "true", "HX-Target": "board-columns"}, 204),
        }
        sizes[size] = (client, counter, targets)
    timings = {size: {k: [] for k in targets} for size, (_, _, targets) in sizes.items()}
    statements: dict[int, dict] = {size: {} for size in sizes}
    for round_ in range(runs + 5):  # five warm-up rounds
        for size, (client, counter, targets) in sizes.items():
            for name, (url, headers, expected) in targets.items():
                before = counter.count
                start = time.perf_counter()
                response = client.get(url, headers=headers)
                elapsed = time.perf_counter() - start
                assert response.status_code == expected, (size, name, response.status_code)
                if name == "board" and round_ == 0:
                    html = response.get_data(as_text=True)
                    assert html.count('class="card') >= 25, "the board shows too few cards"
                if round_ >= 5:
                    timings[size][name].append(elapsed * 1000)
                    statements[size][name] = counter.count - before
    if profile:
        try:
            from pyinstrument import Profiler
        except ImportError:
            print("pyinstrument is not installed: .venv/bin/pip install pyinstrument", file=sys.stderr)
        else:
            client = sizes[min(sizes)][0]
            profiler = Profiler(interval=0.0005)
            profiler.start()
            for _ in range(20):
                client.get("/")
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=False))
    return {size: {name: {"median": statistics.median(t), "p95": sorted(t)[max(int(len(t) * 0.95) - 1, 0)],
                          "min": min(t), "statements": statements[size][name]} for name, t in by_name.items()}
            for size, by_name in timings.items()}


def run_backend(label: str, urls: dict[int, str], runs: int, profile: bool) -> list[tuple]:
    """Seeds one database per size (`urls`), then measures all sizes together."""
    from portal.extensions import db

    seeded = {}
    for size, url in urls.items():
        app = make_app(url)
        with app.app_context():
            db.drop_all()
            db.create_all()
            started = time.perf_counter()
            ids = seed(size, random.Random(size))
            took = time.perf_counter() - started
            db.session.remove()
        print(f"{label}: seeded {size} open cases in {took:.1f}s", file=sys.stderr)
        seeded[size] = (app, ids)
    print(f"{label}: measuring {runs} rounds...", file=sys.stderr)
    try:
        results = measure(seeded, runs, profile=profile)
    finally:
        for app, _ in seeded.values():
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
    return [(label, size, results[size]) for size in urls]


def scratch_pg(server_url: str):
    import sqlalchemy as sa

    parts = urlsplit(server_url.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = urlunsplit(parts._replace(path="/postgres"))
    name = f"lm_bench_{secrets.token_hex(4)}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop():
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    return urlunsplit(parts._replace(path=f"/{name}")), drop


def report(rows: list[tuple]) -> bool:
    import os

    print()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (timings are wall clock, in-process)")
    print(f"{'backend':<10} {'open':>6} {'route':<6} {'median ms':>10} {'p95 ms':>8} {'min ms':>7} {'stmts':>6} "
          f"{'x bare':>7}")
    ok = True
    for label, size, result in rows:
        bare = result["bare"]["median"]
        for name in ("bare", "board", "poll"):
            r = result[name]
            print(f"{label:<10} {size:>6} {name:<6} {r['median']:>10.2f} {r['p95']:>8.2f} {r['min']:>7.2f} "
                  f"{r['statements']:>6} {r['median'] / bare:>7.1f}")
    print()
    by_backend: dict[str, list] = {}
    for label, size, result in rows:
        by_backend.setdefault(label, []).append((size, result))
    for label, results in by_backend.items():
        smallest = results[0][1]
        board_x = smallest["board"]["median"] / smallest["bare"]["median"]
        poll_x = smallest["poll"]["median"] / smallest["bare"]["median"]
        board_min_x = smallest["board"]["min"] / smallest["bare"]["min"]
        flat = {n: {r["board"]["statements"] if n == "board" else r["poll"]["statements"] for _, r in results}
                for n in ("board", "poll")}
        largest = results[-1][1]
        growth = largest["board"]["median"] / smallest["board"]["median"]
        checks = [
            (f"board/bare at {results[0][0]} open cases = {board_x:.1f}x by median, {board_min_x:.1f}x by best run "
             "(target <= 25x)", board_x <= 25),
            (f"board at {results[-1][0]} open cases = {growth:.2f}x the board at {results[0][0]} by median "
             "(target <= 1.25x: the same cards cost the same)", growth <= 1.25),
            (f"poll/bare = {poll_x:.1f}x (target <= 2x)", poll_x <= 2),
            (f"board statements {sorted(flat['board'])}, poll statements {sorted(flat['poll'])} "
             "across sizes (target: flat)", len(flat["board"]) == 1 and len(flat["poll"]) == 1),
        ]
        for text, passed in checks:
            ok &= passed
            print(f"{label}: {'PASS' if passed else 'MISS'}  {text}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="500,5000", help="open cases to seed, comma separated")
    parser.add_argument("--runs", type=int, default=40, help="timed rounds per size (after 5 warm-up rounds)")
    parser.add_argument("--pg", metavar="URL", help="also bench PostgreSQL on this server (a scratch database)")
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile of the board")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += run_backend("sqlite", {size: f"sqlite:///{tmp}/bench-{size}.sqlite3" for size in sizes}, args.runs,
                            args.profile)
    if args.pg:
        scratch = {size: scratch_pg(args.pg) for size in sizes}
        try:
            rows += run_backend("postgresql", {size: url for size, (url, _) in scratch.items()}, args.runs,
                                args.profile)
        finally:
            for _, drop in scratch.values():
                drop()
    return 0 if report(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
