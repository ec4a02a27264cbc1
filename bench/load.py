"""Bench: a multi-process load run on loopback (issue 11).

gunicorn (4 workers) serving the real app, 3 RQ workers (`rq worker --worker-class jobs.worker.Worker
--with-scheduler`, the README's production command) and `rq cron jobs.sweep`, on PostgreSQL and a
real Redis. At the same time, from other processes:

  coordinators  signed in through /login (CSRF token from the form), each polls the board as htmx
                does (GET /?since=<stamp> with HX-Request, every BOARD_POLL_SECONDS), reloads it
                now and then, and moves its own cards (the Move menu, then POST /cases/<id>/move
                with the form's csrf_token and htmx's X-CSRFToken, HX-Request, HX-Target
                board-columns): Dispatched -> Received -> Fitted.
  labs          three API labs post signed status events (acknowledged, in_production, dispatched:
                docs/lab-api.md) to /api/labs/<id>/events for cases sent to them, each case's
                events in order; 2% of the deliveries are sent twice (a retry: same webhook-id).
                Signed with sandbox/webhooks.py, the sandbox's own signer.
  (scanners     not driven yet: the two scanners notifying of issue 11 are still to do.)

Then the run waits (bounded) for the queue to settle and counts from the database:

  applied     accepted events (answered 204 to their first delivery) whose lab_event row says
              "applied", each with exactly one lab-actor audit row (case.<action>) naming its
              event id
  lost        accepted events with no lab_event row, still pending, not applied, or without
              their audit row
  duplicates  lab_event rows beyond one per (lab, event id), audit rows beyond one per event id,
              and cases whose lab moves are not exactly acknowledge, start_production, dispatch
              once each (a case moved twice by one event); coordinator moves audited twice
  errors      5xx answers anywhere (a 500 is a bug)

The second run does the same with one RQ worker (and its work horse) SIGKILLed mid-run: the
sweep must hand its jobs to the others, nothing lost, nothing doubled. Exit status 1 when lost,
duplicates or 5xx answers are not all 0.

    DATABASE_URL=postgresql://postgres@127.0.0.1/lm_load REDIS_URL=redis://127.0.0.1:6379/4 \\
      .venv/bin/python bench/load.py [--events 20000] [--coordinators 50] [--seconds 150] [--quick]
                                     [--runs plain,kill] [--web-workers 4] [--rq-workers 3]

It drops and recreates every table in DATABASE_URL and empties the Redis database.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch import SECRET, _start_stub, fresh_schema, start_gunicorn  # noqa: E402

LAB_STEPS = [("acknowledged", {}), ("in_production", {}),
             ("dispatched", {"carrier": "UPS", "tracking_number": "1Z999"})]
LAB_ACTIONS = ["acknowledge", "start_production", "dispatch"]
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
STAMP = re.compile(r'data-stamp="(\d+)"')


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# -- seeding ---------------------------------------------------------------------------------------------

def seed(app, n_events: int, coordinators: int, cards: int, lab_url: str) -> dict:
    """Three API labs with cases sent to them (approve_and_send, as a person sends), and for every
    coordinator a user and `cards` dispatched cases of a manual lab to move."""
    from bench.dispatch import make_cases
    from portal.extensions import db
    from portal.labs.models import Channel
    from portal.cases.lifecycle import Status
    from portal.practices.models import Role
    from tests import factories

    with app.app_context():
        world = factories.world()
        labs = [factories.lab(world.org, Channel.API, name=f"Load Lab {n}", api_url=lab_url) for n in range(3)]
        db.session.commit()
        per_lab = -(-n_events // len(LAB_STEPS) // len(labs))
        sent = {}
        for lab in labs:
            sent[lab.id] = [(d.id, d.case.number, d.case_id) for d in make_cases(world, lab, per_lab)]
        manual = world.labs["manual"]
        people = []
        for n in range(coordinators):
            user = factories.user(f"coordinator{n}@load.test", [(world.practice, Role.COORDINATOR)])
            own = [factories.case(world, Status.DISPATCHED, lab=manual, commit=False).id
                   for _ in range(cards)]
            db.session.commit()
            people.append({"email": user.email, "cases": own})
        return {"labs": sent, "people": people, "practice_id": world.practice.id}


# -- the simulated clients (forked processes) ------------------------------------------------------------

def coordinator_proc(base: str, people: list[dict], until: float, poll: float, out) -> None:
    import httpx

    from tests.factories import PASSWORD

    results = {"board": [], "poll": [], "move": [], "codes": {}, "moves": 0}
    lock = threading.Lock()

    def note(kind: str, seconds: float, status: int) -> None:
        with lock:
            results[kind].append(seconds)
            results["codes"][f"{kind} {status}"] = results["codes"].get(f"{kind} {status}", 0) + 1

    def one(person: dict) -> None:
        with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as c:
            page = c.get("/login")
            token = CSRF.search(page.text).group(1)
            answer = c.post("/login", data={"csrf_token": token, "email": person["email"],
                                            "password": PASSWORD})
            if answer.status_code != 302:
                note("board", 0, answer.status_code)
                return
            moves = [(case_id, to) for case_id in person["cases"] for to in ("received", "fitted")]
            last_full = 0.0
            stamp = None
            token = None
            while time.time() < until:
                started = time.perf_counter()
                if stamp is None or time.time() - last_full > 30:
                    r = c.get("/")
                    note("board", time.perf_counter() - started, r.status_code)
                    last_full = time.time()
                    if r.status_code == 200:
                        stamp = STAMP.search(r.text).group(1)
                        token = CSRF.search(r.text).group(1) if CSRF.search(r.text) else token
                else:
                    r = c.get("/", params={"since": stamp}, headers={
                        "HX-Request": "true", "HX-Current-URL": f"{base}/", "HX-Target": "board-columns",
                        "HX-Trigger": "board-columns"})
                    note("poll", time.perf_counter() - started, r.status_code)
                    if r.status_code == 200:
                        found = STAMP.search(r.text)
                        stamp = found.group(1) if found else stamp
                if moves and time.time() < until:
                    case_id, to = moves[0]
                    menu = c.get(f"/cases/{case_id}/menu", headers={"HX-Request": "true"})
                    found = CSRF.search(menu.text)
                    form_token = found.group(1) if found else token
                    started = time.perf_counter()
                    r = c.post(f"/cases/{case_id}/move", data={"csrf_token": form_token, "status": to, "next": "/"},
                               headers={"HX-Request": "true", "HX-Target": "board-columns",
                                        "HX-Current-URL": f"{base}/", "X-CSRFToken": token or form_token})
                    note("move", time.perf_counter() - started, r.status_code)
                    if r.status_code == 200:
                        moves.pop(0)
                        with lock:
                            results["moves"] += 1
                        found = STAMP.search(r.text)
                        stamp = found.group(1) if found else stamp
                time.sleep(max(0.0, poll - (time.perf_counter() - started)))

    threads = [threading.Thread(target=one, args=(p,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.send(results)


def lab_proc(base: str, lab_id: int, cases: list, until: float, threads: int, repeat_every: int, out) -> None:
    """One lab: its cases shared among `threads` posters, each case's three events in order."""
    import datetime as dt

    import httpx

    from sandbox import webhooks

    accepted, seconds, codes, repeats = [], [], {}, 0
    lock = threading.Lock()

    def post(client, raw: bytes, msg_id: str) -> int:
        started = time.perf_counter()
        try:
            status = client.post(f"/api/labs/{lab_id}/events", content=raw, headers={
                "Content-Type": "application/json", **webhooks.headers(SECRET, msg_id, raw)}).status_code
        except httpx.TransportError:
            status = 0
        with lock:
            seconds.append(time.perf_counter() - started)
            codes[status] = codes.get(status, 0) + 1
        return status

    def run(mine: list) -> None:
        nonlocal repeats
        n = 0
        with httpx.Client(base_url=base, timeout=30) as client:
            for step, (kind, data) in enumerate(LAB_STEPS):
                for order_id, number, _ in mine:
                    if time.time() >= until:
                        return
                    event_id = f"evt_{uuid.uuid4().hex}"
                    raw = json.dumps({"event_id": event_id, "order_id": order_id, "case_number": number,
                                      "type": kind, "data": data,
                                      "occurred_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
                                     ).encode()
                    msg_id = f"msg_{uuid.uuid4().hex}"
                    if post(client, raw, msg_id) == 204:
                        with lock:
                            accepted.append(event_id)
                    n += 1
                    if repeat_every and n % repeat_every == 0:  # a lab's retry: the same delivery again
                        post(client, raw, msg_id)
                        with lock:
                            repeats += 1

    # Each poster takes whole cases; a case's three events go out in order, one wave per step.
    chunks = [cases[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    out.send({"lab_id": lab_id, "accepted": accepted, "seconds": seconds, "codes": codes, "repeats": repeats})


# -- the servers -----------------------------------------------------------------------------------------

def start_workers(env: dict, n: int, queue: str) -> list[subprocess.Popen]:
    rq = str(Path(sys.executable).parent / "rq")
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen(
            [rq, "worker", "--worker-class", "jobs.worker.Worker", "--with-scheduler", "--url", env["REDIS_URL"],
             "--path", str(ROOT), "--logging_level", "WARNING", "--name", f"load-{i}-{uuid.uuid4().hex[:4]}", queue],
            env={**os.environ, **env}, cwd=ROOT, start_new_session=True))
    procs.append(subprocess.Popen(
        [rq, "cron", "--url", env["REDIS_URL"], "--path", str(ROOT), "--logging-level", "WARNING", "jobs.sweep"],
        env={**os.environ, **env}, cwd=ROOT, start_new_session=True))
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


# -- counting --------------------------------------------------------------------------------------------

def count(app, seeded: dict, accepted: dict[int, list[str]]) -> dict:
    """Every accepted event applied exactly once (lab_event row, one audit row), every case moved by
    its lab exactly once per step, every coordinator move audited once."""
    from sqlalchemy import func, select

    from portal.audit.models import AuditEvent
    from portal.dispatch.models import LabEvent
    from portal.extensions import db

    with app.app_context():
        rows = db.session.execute(select(LabEvent.lab_id, LabEvent.event_id, LabEvent.outcome)).all()
        by_event: dict[tuple, list[str]] = {}
        for lab_id, event_id, outcome in rows:
            by_event.setdefault((lab_id, event_id), []).append(outcome)
        audits = db.session.execute(select(AuditEvent.entity_id, AuditEvent.action, AuditEvent.after).where(
            AuditEvent.actor_type == "lab", AuditEvent.entity_type == "lab_case")).all()
        audit_by_event: dict[str, int] = {}
        lab_moves: dict[str, list[str]] = {}
        not_applied = 0
        for entity_id, action, after in audits:
            event_id = json.loads(after or "{}").get("event_id")
            if action.startswith("lab_event."):  # noop / ignored: an event that changed nothing
                not_applied += 1
            if event_id:
                audit_by_event[event_id] = audit_by_event.get(event_id, 0) + 1
            if action.startswith("case."):
                lab_moves.setdefault(entity_id, []).append(action.removeprefix("case."))
        applied = lost = duplicates = 0
        outcomes: dict[str, int] = {}
        for lab_id, ids in accepted.items():
            for event_id in ids:
                found = by_event.get((lab_id, event_id), [])
                for o in found:
                    outcomes[o] = outcomes.get(o, 0) + 1
                if len(found) > 1:
                    duplicates += len(found) - 1
                audited = audit_by_event.get(event_id, 0)
                if audited > 1:
                    duplicates += audited - 1
                if found and found[0] == "applied" and audited >= 1:
                    applied += 1
                else:
                    lost += 1
        stored_extra = len(rows) - sum(len(v) for v in accepted.values())  # rows for events never accepted
        moved_twice = 0
        for lab_id, cases in seeded["labs"].items():
            for _, _, case_id in cases:
                actions = lab_moves.get(str(case_id), [])
                if len(actions) != len(set(actions)):
                    moved_twice += 1
        people_cases = [c for p in seeded["people"] for c in p["cases"]]
        person_moves = db.session.execute(select(AuditEvent.entity_id, AuditEvent.action, func.count()).where(
            AuditEvent.actor_type == "user", AuditEvent.entity_type == "lab_case",
            AuditEvent.entity_id.in_([str(c) for c in people_cases]),
            AuditEvent.action.in_(["case.receive", "case.fit"])).group_by(AuditEvent.entity_id, AuditEvent.action)).all()
        person_dupes = sum(n - 1 for _, _, n in person_moves if n > 1)
        pending = db.session.scalar(select(func.count()).select_from(LabEvent).where(LabEvent.outcome == "pending"))
    return {"applied": applied, "lost": lost, "duplicates": duplicates + moved_twice + person_dupes,
            "moved_twice": moved_twice, "person_moves_audited": sum(n for _, _, n in person_moves),
            "person_duplicates": person_dupes, "outcomes": outcomes, "pending": pending,
            "rows_not_accepted": stored_extra, "lab_noop_or_ignored_audits": not_applied}


def settle(app, until: float) -> float:
    """Wait until no lab event is pending (or `until`); returns the seconds waited."""
    from sqlalchemy import func, select

    from portal.dispatch.models import LabEvent
    from portal.extensions import db

    started = time.monotonic()
    with app.app_context():
        while time.time() < until:
            pending = db.session.scalar(select(func.count()).select_from(LabEvent).where(LabEvent.outcome == "pending"))
            db.session.rollback()
            if not pending:
                break
            time.sleep(1)
    return time.monotonic() - started


# -- one run ---------------------------------------------------------------------------------------------

def one_run(args, env: dict, kill: bool) -> dict:
    import redis

    from portal import create_app
    from portal.config import Config

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    app = create_app({"RATELIMIT_STORAGE_URI": "memory://"})
    fresh_schema(app)
    stub_proc, stub_port = _start_stub()
    procs: list[subprocess.Popen] = []
    gunicorn = None
    try:
        t0 = time.perf_counter()
        seeded = seed(app, args.events, args.coordinators, args.cards, f"http://127.0.0.1:{stub_port}")
        print(f"  seeded in {time.perf_counter() - t0:.0f}s: "
              f"{sum(len(v) for v in seeded['labs'].values())} sent cases at 3 labs, "
              f"{args.coordinators} coordinators with {args.cards} cards each", flush=True)
        gunicorn, base = start_gunicorn(env, args.web_workers)
        procs = start_workers(env, args.rq_workers, Config().RQ_QUEUE)
        time.sleep(2)
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("an RQ worker or rq cron exited at start")
        until = time.time() + args.seconds
        ctx = mp.get_context("fork")
        pipes, children = [], []
        people = seeded["people"]
        groups = max(1, min(5, len(people)))
        for g in range(groups):
            mine = people[g::groups]
            if not mine:
                continue
            a, b = ctx.Pipe(False)
            p = ctx.Process(target=coordinator_proc, args=(base, mine, until, args.poll, b))
            p.start()
            pipes.append(("coordinators", a))
            children.append(p)
        for lab_id, cases in seeded["labs"].items():
            a, b = ctx.Pipe(False)
            p = ctx.Process(target=lab_proc, args=(base, lab_id, cases, until, args.lab_threads, 50, b))
            p.start()
            pipes.append(("lab", a))
            children.append(p)
        started = time.time()
        killed = None
        if kill:
            # Mid-run: once the labs are well under way, SIGKILL one worker and its work horse.
            time.sleep(min(args.seconds / 3, 20))
            victim = procs[0]
            os.killpg(victim.pid, signal.SIGKILL)
            killed = time.time() - started
            print(f"  SIGKILLed RQ worker {victim.pid} (and its work horse) at {killed:.0f}s", flush=True)
        results = {"coordinators": [], "lab": []}
        for kind, pipe in pipes:
            results[kind].append(pipe.recv())
        for p in children:
            p.join()
        load_s = time.time() - started
        wait = settle(app, time.time() + args.settle)
        counted = count(app, seeded, {r["lab_id"]: r["accepted"] for r in results["lab"]})
    finally:
        stop(procs)
        if gunicorn is not None:
            gunicorn.terminate()
            gunicorn.wait(10)
        stub_proc.kill()
    board = [s for r in results["coordinators"] for s in r["board"]]
    polls = [s for r in results["coordinators"] for s in r["poll"]]
    moves = [s for r in results["coordinators"] for s in r["move"]]
    hook = [s for r in results["lab"] for s in r["seconds"]]
    codes: dict[str, int] = {}
    for r in results["coordinators"]:
        for k, v in r["codes"].items():
            codes[k] = codes.get(k, 0) + v
    for r in results["lab"]:
        for k, v in r["codes"].items():
            codes[f"webhook {k}"] = codes.get(f"webhook {k}", 0) + v
    errors = sum(v for k, v in codes.items() if k.split()[-1].startswith("5") or k.split()[-1] == "0")
    accepted = sum(len(r["accepted"]) for r in results["lab"])
    return {"kill": kill, "killed_at": killed, "load_seconds": load_s, "settle_seconds": wait,
            "board_p95": pct(board + polls, 95), "board_page_p95": pct(board, 95), "poll_p95": pct(polls, 95),
            "move_p95": pct(moves, 95), "webhook_p99": pct(hook, 99), "webhook_p50": pct(hook, 50),
            "requests": {"board": len(board), "poll": len(polls), "move": len(moves), "webhook": len(hook)},
            "accepted": accepted, "repeats": sum(r["repeats"] for r in results["lab"]),
            "coordinator_moves": sum(r["moves"] for r in results["coordinators"]),
            "codes": codes, "errors": errors, **counted, "load": os.getloadavg()}


def report(r: dict) -> None:
    title = "one RQ worker SIGKILLed mid-run" if r["kill"] else "all workers up"
    print(f"{title}: load {r['load_seconds']:.0f}s, settled {r['settle_seconds']:.0f}s later")
    print(f"  board p95 {r['board_p95'] * 1000:.0f} ms over {r['requests']['board'] + r['requests']['poll']} "
          f"requests (full page p95 {r['board_page_p95'] * 1000:.0f} ms x{r['requests']['board']}, "
          f"htmx poll p95 {r['poll_p95'] * 1000:.0f} ms x{r['requests']['poll']}); "
          f"card moves p95 {r['move_p95'] * 1000:.0f} ms x{r['requests']['move']}")
    print(f"  webhook p99 {r['webhook_p99'] * 1000:.0f} ms (p50 {r['webhook_p50'] * 1000:.0f} ms) over "
          f"{r['requests']['webhook']} deliveries ({r['repeats']} of them repeats)")
    print(f"  events accepted {r['accepted']}, applied {r['applied']}, lost {r['lost']}, duplicates "
          f"{r['duplicates']} (cases moved twice by one event {r['moved_twice']}, coordinator moves audited "
          f"twice {r['person_duplicates']}); still pending {r['pending']}; outcomes {r['outcomes']}")
    print(f"  coordinator moves {r['coordinator_moves']} (audited {r['person_moves_audited']}); "
          f"5xx/transport errors {r['errors']}; answers {dict(sorted(r['codes'].items()))}")
    print(f"  load average {r['load'][0]:.2f} {r['load'][1]:.2f} {r['load'][2]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="lab status events in all (three a case)")
    parser.add_argument("--coordinators", type=int, default=50)
    parser.add_argument("--cards", type=int, default=4, help="cards each coordinator moves (two moves a card)")
    parser.add_argument("--seconds", type=float, default=150, help="the load phase's limit")
    parser.add_argument("--settle", type=float, default=90, help="how long to wait for the queue afterwards")
    parser.add_argument("--poll", type=float, default=3.0, help="a coordinator's poll interval (BOARD_POLL_SECONDS)")
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument("--rq-workers", type=int, default=3)
    parser.add_argument("--lab-threads", type=int, default=4, help="concurrent posters per lab")
    parser.add_argument("--runs", default="plain,kill", help="plain (all workers up), kill (one SIGKILLed)")
    parser.add_argument("--quick", action="store_true", help="600 events, 5 coordinators, 40 s")
    args = parser.parse_args()
    if args.quick:
        args.events, args.coordinators, args.cards, args.seconds, args.settle = 600, 5, 2, 40, 60
    if not (os.environ.get("DATABASE_URL", "").startswith("postgresql") and os.environ.get("REDIS_URL")):
        sys.exit("bench/load.py runs on PostgreSQL and a real Redis: set DATABASE_URL=postgresql://... and "
                 "REDIS_URL=redis://...; it drops every table there and empties that Redis database.")
    env = {"SECRET_KEY": "load-secret", "LM_ENV": "development", "PUBLIC_BASE_URL": "http://127.0.0.1",
           "LAB_API_TIMEOUT": "5", "DISPATCH_RETRY_SCHEDULE": "1,2,5", "OUTBOX_SWEEP_SECONDS": "5",
           "DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"]}
    os.environ.update(env)
    print(f"load run: {args.events} lab events, {args.coordinators} coordinators, gunicorn -w {args.web_workers}, "
          f"{args.rq_workers} RQ workers + rq cron; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    failed = False
    for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
        result = one_run(args, env, kill=run == "kill")
        report(result)
        failed |= bool(result["lost"] or result["duplicates"] or result["errors"])
    print("FAIL: events lost or doubled, or 5xx answers" if failed else "PASS: nothing lost, nothing doubled, no 5xx")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
