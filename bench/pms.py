"""Bench: a practice management system's first sync, and a sync with nothing changed.

The Open Dental sandbox (sandbox/opendental.py) runs in another process on 127.0.0.1 with
20,000 patients and 60,000 appointments (and a few providers and laboratories); the real sync
(portal/integrations/pms.py through the Open Dental adapter, over HTTP, 100 rows a request) reads
it all into an empty practice, then syncs again with nothing changed.

Targets: the first sync <= 60 s; memory flat in the number of rows (the process's resident size
sampled while the sync runs: it may grow by at most 64 MB between the first 10% of the rows and the
end); the second sync <= 2 requests per resource.

    .venv/bin/python bench/pms.py [--patients 20000] [--appointments 60000]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<scratch db> .venv/bin/python bench/pms.py

SQLite by default; DATABASE_URL to bench PostgreSQL (every table there is dropped and recreated).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIRST_SYNC_LIMIT = 60.0
GROWTH_LIMIT_MB = 64.0
REQUESTS_PER_RESOURCE = 2


def _serve(pipe, patients: int, appointments: int) -> None:
    from sandbox.opendental import OpenDentalSandbox

    sandbox = OpenDentalSandbox().start()
    counts = sandbox.seed(patients=patients, appointments=appointments, providers=12, laboratories=6)
    pipe.send((sandbox.base_url, sandbox.url, counts))
    while True:
        time.sleep(3600)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler(threading.Thread):
    """The resident size, and how many rows the sync had applied then (its progress on the row)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.rows = 0
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(0.1):
            self.samples.append((self.rows, rss_mb()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=20000)
    parser.add_argument("--appointments", type=int, default=60000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pms-"))
    os.environ.setdefault("SECRET_KEY", "bench-secret")
    os.environ["LM_ENV"] = "development"
    os.environ["DATABASE_URL"] = os.environ.get("DATABASE_URL") or f"sqlite:///{tmp / 'bench.sqlite3'}"
    parent, child = mp.Pipe()
    server = mp.get_context("fork").Process(target=_serve, args=(child, args.patients, args.appointments), daemon=True)
    server.start()
    base_url, root, counts = parent.recv()
    try:
        return run(base_url, root, counts, args)
    finally:
        server.terminate()


def run(base_url: str, root: str, counts: dict, args) -> int:
    import httpx
    from sqlalchemy import func, select

    from bench.dispatch import fresh_schema
    from portal import create_app
    from portal.extensions import db
    from portal.integrations import pms
    from portal.people.models import Appointment, Patient
    from tests import factories
    from tests.integrations.opendental_support import od_integration

    app = create_app({"RATELIMIT_ENABLED": False})
    fresh_schema(app)
    with app.app_context():
        world = factories.world()
        integration = od_integration(world.practice, base_url)
        sampler = Sampler()
        real_apply = pms.apply_page

        def counting_apply(*a, **kw):
            real_apply(*a, **kw)
            sampler.rows += len(a[2])

        pms.apply_page = counting_apply
        sampler.start()
        started = time.perf_counter()
        first = pms.run_pms_sync(integration.id, "bench")
        first_seconds = time.perf_counter() - started
        sampler.stopping.set()
        sampler.join()
        assert "error" not in first, first
        patients = db.session.scalar(select(func.count()).select_from(Patient).where(
            Patient.practice_id == world.practice.id))
        appointments = db.session.scalar(select(func.count()).select_from(Appointment))
        total = sum(counts.values())
        early = [mb for rows, mb in sampler.samples if rows <= total * 0.1] or [sampler.samples[0][1]]
        growth = max(mb for _, mb in sampler.samples) - max(early)
        before = httpx.get(f"{root}/_sandbox/counters", timeout=5).json()
        started = time.perf_counter()
        second = pms.run_pms_sync(integration.id, "bench")
        second_seconds = time.perf_counter() - started
        after = httpx.get(f"{root}/_sandbox/counters", timeout=5).json()
        # every endpoint the sync reads (the appointment history for deletions too), not a list kept here
        per_resource = {k: after[k] - before.get(k, 0) for k in sorted(after)}
        assert "error" not in second, second
    engine = os.environ["DATABASE_URL"].split(":", 1)[0]
    print(f"\nbench/pms.py on {engine}: {args.patients:,} patients, {args.appointments:,} appointments in the sandbox")
    print(f"  first sync   {first_seconds:6.1f} s   {first['requests']:,} requests   "
          f"{patients:,} patients, {appointments:,} appointments here   "
          f"{(counts['patients'] + counts['appointments']) / first_seconds:,.0f} rows/s")
    marks = [sampler.samples[int(len(sampler.samples) * f) - 1] for f in (0.1, 0.25, 0.5, 0.75, 1.0)]
    print("  memory       " + "   ".join(f"{rows:,.0f} rows: {mb:.0f} MB" for rows, mb in marks)
          + f"   growth after the first 10%: {growth:.1f} MB")
    print(f"  nothing changed: {second_seconds:.2f} s, requests {per_resource}")
    ok_time = first_seconds <= FIRST_SYNC_LIMIT
    ok_memory = growth <= GROWTH_LIMIT_MB
    ok_requests = all(n <= REQUESTS_PER_RESOURCE for n in per_resource.values())
    ok_rows = patients == args.patients and appointments == args.appointments
    for label, ok in (("first sync <= 60 s", ok_time), (f"memory growth <= {GROWTH_LIMIT_MB:.0f} MB", ok_memory),
                      ("nothing changed: <= 2 requests per resource", ok_requests), ("every row read", ok_rows)):
        print(f"  {'PASS' if ok else 'MISS'}  {label}")
    return 0 if ok_time and ok_memory and ok_requests and ok_rows else 1


if __name__ == "__main__":
    sys.exit(main())
