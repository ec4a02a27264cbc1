"""Bench: a multi-process load run on loopback (issue 11).

gunicorn (4 workers) serving the real app, 3 RQ workers (`rq worker --worker-class jobs.worker.Worker
--with-scheduler`, the README's production command) and `rq cron jobs.sweep`, on PostgreSQL and a
real Redis. Seeding: three API labs with cases sent to them and delivered (one through
approve_and_send and the delivery job, the rest copies of its rows: bulk_sent_cases), coordinators
with dispatched cards, two scanner integrations signed in to the vendor sandbox. Then, at the same
time, from other processes:

  coordinators  signed in through /login (CSRF token from the form), each polls the board as htmx
                does (GET /?since=<stamp> with HX-Request, every BOARD_POLL_SECONDS), reloads it
                now and then, and moves its own cards (the Move menu, then POST /cases/<id>/move
                with the form's csrf_token and htmx's X-CSRFToken, HX-Request, HX-Target
                board-columns): Dispatched -> Received -> Fitted. A request that raises (a
                timeout) is counted as an error and the coordinator carries on.
  labs          three API labs post signed status events (acknowledged, in_production, dispatched:
                docs/lab-api.md) to /api/labs/<id>/events for cases sent to them, each case's
                events in order; 2% of the deliveries are sent twice (a retry: same webhook-id),
                and one that got no answer or a 5xx goes again with its webhook-id (3 tries).
                Signed with sandbox/webhooks.py, the sandbox's own signer.
  scanners      sandbox/vendors.py's iTero and Medit Link in a process of their own: new orders
                and cases every --scan-every seconds, their callbacks and signed webhooks posted
                to /api/scanners/hooks/<key>; the workers' event jobs re-read each order from the
                sandbox and make its scan (and the draft case of a matched patient); the sweep's
                polls run too.

The load phase ends once the labs have posted every event (the coordinators and scanners stop
then), or at --seconds. Then the run waits (bounded) for the queues to settle and counts from
the database:

  applied     accepted events (answered 204) whose lab_event row says "applied", each with
              exactly one lab-actor audit row (case.<action>) naming its event id
  lost        accepted events with no lab_event row, still pending, not applied, or without
              their audit row
  duplicates  lab_event rows beyond one per (lab, event id), audit rows beyond one per event id,
              cases moved twice by one lab action; coordinator moves audited twice
  scans       per vendor: orders made, notifications posted and accepted (2xx), orders with a
              scan (lost: without one), scans or cases beyond one per order (duplicates),
              notifications still waiting
  errors      5xx answers anywhere (a 500 is a bug), and requests that got no answer (a timeout,
              a reset connection), by the exception's name
  chain       the audit chain verified end to end (every process signed into one chain)

The second run does the same with one RQ worker (and its work horse) SIGKILLed mid-run: the
sweep must hand its jobs to the others, nothing lost, nothing doubled. Exit status 1 when any of
lost, duplicates, errors, scans lost or doubled, notifications waiting or chain problems is not 0.

    DATABASE_URL=postgresql://postgres@127.0.0.1/lm_load REDIS_URL=redis://127.0.0.1:6379/4 \\
      .venv/bin/python bench/load.py [--events 20000] [--coordinators 50] [--seconds 900] [--quick]
                                     [--runs plain,kill] [--web-workers 4] [--rq-workers 3]
                                     [--scan-every 1.5] [--timeout 30]

It drops and recreates every table in DATABASE_URL and empties the Redis database.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch import SECRET, _start_stub, fresh_schema, make_cases, start_gunicorn  # noqa: E402

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

# What one case sent to an API lab and delivered leaves in the database (approve_and_send, then the
# delivery job): the tables bulk_sent_cases copies. Any other table is a change it must learn.
SENT_TABLES = {"patient", "lab_case", "case_item", "dispatch", "audit_event", "counter"}
SENT_AUDIT = ["case.create", "case.send", "dispatch.delivered"]


def _row_counts() -> dict[str, int]:
    from sqlalchemy import func, select

    from portal.extensions import db

    return {t.name: db.session.scalar(select(func.count()).select_from(t)) for t in db.metadata.sorted_tables}


def bulk_sent_cases(world, lab, n: int) -> list[tuple[str, str, int]]:
    """`n` cases sent to `lab` through approve_and_send and delivered to it, in bulk.

    The first case is sent and delivered by the product's own code (approve_and_send, then the
    lab's drain job in this process, to the lab's URL). The other n - 1 are copies of its rows,
    every column as that case left it but its own ids: a patient, the case (Sent), its items, the
    dispatch (delivered, its work order naming its own order id, case number and patient), and
    the three audit rows (case.create, case.send, dispatch.delivered) chained and signed as
    `record()` signs them. Returns (order id, case number, case id) of each. Fails if the first
    case left rows in any other table, or other audit rows, than these copies know of."""
    import json
    import types
    import uuid as uuidlib

    from sqlalchemy import insert, select, update

    from portal.audit import keys
    from portal.audit.models import AuditEvent, AuditHead
    from portal.audit.record import GENESIS, canonical, row_hash
    from portal.cases.models import CaseItem, Counter, LabCase
    from portal.clock import utcnow
    from portal.dispatch import delivery
    from portal.dispatch.models import Dispatch, DispatchState, new_id
    from portal.extensions import db
    from portal.people.models import Patient

    before = _row_counts()
    first = make_cases(world, lab, 1)[0]
    case_id, order_id = first.case_id, first.id
    delivery.deliver_due(lab.id)
    db.session.commit()
    changed = {t for t, c in _row_counts().items() if c != before[t]}
    if not changed <= SENT_TABLES:
        raise RuntimeError(f"a sent case now also writes {sorted(changed - SENT_TABLES)}: teach bulk_sent_cases")

    def row_of(table, *where):
        return dict(db.session.execute(select(table).where(*where)).mappings().one())

    p_t, c_t, i_t, d_t, a_t = (m.__table__ for m in (Patient, LabCase, CaseItem, Dispatch, AuditEvent))
    case = row_of(c_t, c_t.c.id == case_id)
    patient = row_of(p_t, p_t.c.id == case["patient_id"])
    items = [dict(r) for r in db.session.execute(select(i_t).where(i_t.c.case_id == case_id)
                                                 .order_by(i_t.c.position)).mappings()]
    order = row_of(d_t, d_t.c.id == order_id)
    audits = [dict(r) for r in db.session.execute(select(a_t).where(
        ((a_t.c.entity_type == "lab_case") & (a_t.c.entity_id == str(case_id)))
        | ((a_t.c.entity_type == "dispatch") & (a_t.c.entity_id == order_id))).order_by(a_t.c.seq)).mappings()]
    if [a["action"] for a in audits] != SENT_AUDIT or order["state"] is not DispatchState.DELIVERED:
        raise RuntimeError(f"the first case left {[a['action'] for a in audits]}, dispatch {order['state']}: "
                           "teach bulk_sent_cases")
    sent = [(order_id, case["number"], case_id)]
    m = n - 1
    if m <= 0:
        return sent

    prefix, _, _ = case["number"].rpartition("-")
    last = db.session.scalar(update(Counter).where(Counter.name == f"case-{prefix.split('-')[-1]}")
                             .values(value=Counter.value + m).returning(Counter.value))
    numbers = [f"{prefix}-{v:06d}" for v in range(last - m + 1, last + 1)]
    tag = uuidlib.uuid4().hex[:6]
    charts = [f"B{lab.id}-{tag}-{k:05d}" for k in range(m)]
    names = [f"Bulk{lab.id}x{k}" for k in range(m)]

    def without_id(row):
        return {k: v for k, v in row.items() if k != "id"}

    patient_ids = db.session.scalars(insert(p_t).returning(p_t.c.id, sort_by_parameter_order=True), [
        {**without_id(patient), "chart_number": chart, "last_name": name} for chart, name in zip(charts, names)]).all()
    case_ids = db.session.scalars(insert(c_t).returning(c_t.c.id, sort_by_parameter_order=True), [
        {**without_id(case), "number": number, "patient_id": pid} for number, pid in zip(numbers, patient_ids)]).all()
    db.session.execute(insert(i_t), [{**without_id(item), "case_id": cid} for cid in case_ids for item in items])
    work_order = json.loads(order["payload"])
    assert (work_order["order_id"], work_order["case_number"], work_order["patient"]["reference"]) == \
        (order_id, case["number"], patient["chart_number"])
    orders, refs = [], []
    for k, (cid, number) in enumerate(zip(case_ids, numbers)):
        oid = new_id()
        body = {**work_order, "order_id": oid, "case_number": number,
                "patient": {**work_order["patient"], "reference": charts[k], "last_name": names[k]}}
        refs.append(f"{order['lab_reference']}-{k:05d}"[:100])
        orders.append({**order, "id": oid, "case_id": cid, "webhook_id": "msg_" + oid.replace("-", ""),
                       "lab_reference": refs[-1],
                       "payload": json.dumps(body, separators=(",", ":"), sort_keys=True)})
    db.session.execute(insert(d_t), orders)

    # The audit rows, as record() writes them: the next seqs after the chain head, each row's
    # prev_hash the hash of the row before, each hash signed with the ring's signing key.
    create, send, delivered = audits
    seq, prev = db.session.execute(update(AuditHead).where(AuditHead.id == 1)
                                   .values(seq=AuditHead.seq + 3 * m).returning(AuditHead.seq, AuditHead.hash)).one()
    seq -= 3 * m
    ring = keys.ring()
    rows = []
    for k, (cid, pid, o) in enumerate(zip(case_ids, patient_ids, orders)):
        stamp = utcnow()
        for template, entity_id, after in (
                (create, str(cid), {**json.loads(create["after"]), "patient_id": pid}),
                (send, str(cid), {**json.loads(send["after"]), "dispatch_id": o["id"]}),
                (delivered, o["id"], {**json.loads(delivered["after"]), "case_id": cid,
                                      "lab_reference": refs[k]})):
            seq += 1
            row = {**without_id(template), "seq": seq, "occurred_at": stamp, "entity_id": entity_id,
                   "after": canonical(after), "correlation_id": uuidlib.uuid4().hex, "prev_hash": prev or GENESIS,
                   "key_id": ring.signing_id}
            row["hash"] = prev = row_hash(types.SimpleNamespace(**row), ring)
            rows.append(row)
    db.session.execute(insert(a_t), rows)
    db.session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))
    db.session.commit()
    return sent + [(o["id"], number, cid) for o, number, cid in zip(orders, numbers, case_ids)]


def seed(app, n_events: int, coordinators: int, cards: int, lab_url: str) -> dict:
    """Three API labs with cases sent to them and delivered (bulk_sent_cases), and for every
    coordinator a user and `cards` dispatched cases of a manual lab to move."""
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
        sent = {lab.id: bulk_sent_cases(world, lab, per_lab) for lab in labs}
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

def coordinator_proc(base: str, people: list[dict], until: float, poll: float, out, timeout: float = 30,
                     done=None) -> None:
    """One thread per coordinator. A request that raises (a timeout, a reset connection, a page
    without what it should hold) is counted under its kind and the exception's name ("poll
    ReadTimeout") and the coordinator carries on: signs in again if it was not signed in, reloads
    the board, then goes on with the move it was making. Stops at `until`, or sooner once `done`
    (an Event: the labs have posted every event) is set."""
    import httpx

    from tests.factories import PASSWORD

    results = {"board": [], "poll": [], "move": [], "codes": {}, "moves": 0, "exceptions": 0}
    lock = threading.Lock()

    def note(kind: str, seconds: float, status: int | str) -> None:
        with lock:
            if seconds is not None:
                results[kind].append(seconds)
            results["codes"][f"{kind} {status}"] = results["codes"].get(f"{kind} {status}", 0) + 1

    def one(person: dict) -> None:
        moves = [(case_id, to) for case_id in person["cases"] for to in ("received", "fitted")]
        state = {"signed_in": False, "stamp": None, "token": None, "last_full": 0.0}
        with httpx.Client(base_url=base, timeout=timeout, follow_redirects=False) as c:
            while time.time() < until and not (done is not None and done.is_set()):
                started = time.perf_counter()
                kind = "login"
                try:
                    if not state["signed_in"]:
                        page = c.get("/login")
                        token = CSRF.search(page.text).group(1)
                        answer = c.post("/login", data={"csrf_token": token, "email": person["email"],
                                                        "password": PASSWORD})
                        note("login", None, answer.status_code)
                        if answer.status_code != 302:
                            time.sleep(poll)
                            continue
                        state.update(signed_in=True, stamp=None)
                    kind = "board"
                    step(c, state, moves)
                except Exception as exc:  # noqa: BLE001 - counted, and the coordinator carries on
                    with lock:
                        results["exceptions"] += 1
                    note(state.pop("kind", kind), None, type(exc).__name__)
                    state["stamp"] = None  # start again from a full board
                time.sleep(max(0.0, poll - (time.perf_counter() - started)))

    def step(c, state: dict, moves: list) -> None:
        """One round: the board (a full page now and then, else the htmx poll), then the next move."""
        started = time.perf_counter()
        if state["stamp"] is None or time.time() - state["last_full"] > 30:
            state["kind"] = "board"
            r = c.get("/")
            note("board", time.perf_counter() - started, r.status_code)
            state["last_full"] = time.time()
            if r.status_code == 200:
                state["stamp"] = STAMP.search(r.text).group(1)
                found = CSRF.search(r.text)
                state["token"] = found.group(1) if found else state["token"]
        else:
            state["kind"] = "poll"
            r = c.get("/", params={"since": state["stamp"]}, headers={
                "HX-Request": "true", "HX-Current-URL": f"{base}/", "HX-Target": "board-columns",
                "HX-Trigger": "board-columns"})
            note("poll", time.perf_counter() - started, r.status_code)
            if r.status_code == 200:
                found = STAMP.search(r.text)
                state["stamp"] = found.group(1) if found else state["stamp"]
        if r.status_code in (302, 401):  # signed out (a lost session): sign in again
            state["signed_in"] = False
            return
        if moves and time.time() < until:
            case_id, to = moves[0]
            state["kind"] = "move"
            menu = c.get(f"/cases/{case_id}/menu", headers={"HX-Request": "true"})
            found = CSRF.search(menu.text)
            form_token = found.group(1) if found else state["token"]
            started = time.perf_counter()
            r = c.post(f"/cases/{case_id}/move", data={"csrf_token": form_token, "status": to, "next": "/"},
                       headers={"HX-Request": "true", "HX-Target": "board-columns", "HX-Current-URL": f"{base}/",
                                "X-CSRFToken": state["token"] or form_token})
            note("move", time.perf_counter() - started, r.status_code)
            if r.status_code == 409:  # refused: made already (a retry after a timeout that the server finished)
                moves.pop(0)
            elif r.status_code == 200:
                moves.pop(0)
                with lock:
                    results["moves"] += 1
                found = STAMP.search(r.text)
                state["stamp"] = found.group(1) if found else state["stamp"]
        state.pop("kind", None)

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

    def post(client, raw: bytes, msg_id: str) -> int | str:
        started = time.perf_counter()
        try:
            status = client.post(f"/api/labs/{lab_id}/events", content=raw, headers={
                "Content-Type": "application/json", **webhooks.headers(SECRET, msg_id, raw)}).status_code
        except Exception as exc:  # noqa: BLE001 - a timeout or a reset: counted, and sent again below
            status = type(exc).__name__
        with lock:
            seconds.append(time.perf_counter() - started)
            codes[status] = codes.get(status, 0) + 1
        return status

    def deliver(client, raw: bytes, msg_id: str) -> int | str:
        """As a lab sends: a delivery that failed (an exception, a 5xx) goes again with the same
        webhook-id, up to three times (a repeat of one the server did store is answered 204)."""
        for attempt in range(3):
            status = post(client, raw, msg_id)
            if isinstance(status, int) and status < 500:
                return status
            time.sleep(0.5 * (attempt + 1))
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
                    if deliver(client, raw, msg_id) == 204:
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


# -- the scanners (the vendor sandbox, in a process of its own) -------------------------------------------

ITERO_CLIENT = ("lab-manager-load", "itero-load-secret-0001")
MEDIT_CLIENT = ("LabManagerLoadMeditClient0000001", "LabManagerLoadMeditSecret0000001")  # 32 characters each
MEDIT_WEBHOOK_SECRET = "medit-load-webhook-signing-secret"
ITERO_ACCOUNT = "8001234"
SCAN_PATIENTS = 20


def scanner_proc(conn, done=None) -> None:
    """Two scanners at the practice: sandbox/vendors.py's iTero and Medit Link, serving their APIs
    (the workers re-read every notified order from them) and, once told to go, making new scans
    the load phase ends (`until`, or `done` set): every `every` seconds a new iTero order (its callback) and a new
    Medit case (case.created and files.created webhooks); every 4th step an older iTero order goes
    to iTero Modeling and back to Lab Review (a second callback for the same order), every 5th
    Medit case is delivered twice (a vendor's repeat) and every 7th an older one is rescanned
    (new files). Every callback and webhook the sandbox posts is counted with its answer."""
    import collections

    from sandbox.vendors import Sandbox

    box = Sandbox().start()
    box.add_client("itero", *ITERO_CLIENT)
    box.add_client("medit", *MEDIT_CLIENT)
    lock = threading.Lock()
    queued: collections.Counter = collections.Counter()
    answers: dict[str, collections.Counter] = {"itero": collections.Counter(), "medit": collections.Counter()}
    seconds: dict[str, list[float]] = {"itero": [], "medit": []}
    post, deliver = box.courier.post, box.courier._deliver

    def counted_post(label, url, body, headers):
        with lock:
            queued[label.split()[0]] += 1
        post(label, url, body, headers)

    def counted_deliver(item):
        started = time.perf_counter()
        result = deliver(item)
        vendor = item["label"].split()[0]
        with lock:
            seconds[vendor].append(time.perf_counter() - started)
            answers[vendor][result["status"] or (result["error"].split(":")[0] or "not sent")] += 1
        return result

    box.courier.post, box.courier._deliver = counted_post, counted_deliver
    conn.send(box.url)
    go = conn.recv()
    box.set_medit_webhook(go["medit_webhook"], MEDIT_WEBHOOK_SECRET)
    made: dict[str, list[str]] = {"itero": [], "medit": []}
    patients, step = go["patients"], 0
    while time.time() < go["until"] and not (done is not None and done.is_set()):
        started = time.monotonic()
        person = patients[step % len(patients)]
        try:
            order = box.add_itero_order(patient=person, procedure="Crown", teeth=["36"],
                                        doctor={"doctor_id": "DR-1001", "name": "Dr. Maya Chen"})
            made["itero"].append(order["order_id"])
            if step % 4 == 3:
                older = made["itero"][step - 2]
                box.move_itero_order(older, "modeling")
                box.move_itero_order(older, "lab_review")
            with box.core.lock:
                box.medit.webhook["duplicate"] = step % 5 == 4
            case = box.add_medit_case(patient={"name": f"{person['first_name']} {person['last_name']}",
                                               "code": person["chart_number"]})
            with box.core.lock:
                box.medit.webhook["duplicate"] = False
            made["medit"].append(case["uuid"])
            if step % 7 == 6:
                box.move_medit_case(made["medit"][step - 3], status="COMPLETED", new_files=True)
        except Exception as exc:  # noqa: BLE001 - the sandbox refused a step: say so, carry on
            print(f"  scanner step {step} failed: {exc!r}", flush=True)
        step += 1
        time.sleep(max(0.0, go["every"] - (time.monotonic() - started)))
    drained = box.drain(120)
    with lock:
        conn.send({"made": made, "queued": dict(queued), "drained": drained,
                   "answers": {v: dict(c) for v, c in answers.items()}, "seconds": seconds})
    conn.recv()  # the sandbox serves the workers' re-reads until the run has settled
    box.stop()


def connect_scanners(app, base: str, box_url: str, practice_id: int) -> dict:
    """An iTero and a Medit Link integration of the practice, signed in over HTTP as an admin's
    browser would (the sandbox approves at once) and told to notify gunicorn: iTero paired with its
    callback URL, Medit's webhook URL for the sandbox to post to. Patients the scans match."""
    import httpx
    from urllib.parse import parse_qs, urlsplit

    from portal import keyring as crypto
    from portal.audit.actor import Actor
    from portal.extensions import db
    from portal.integrations import services as admin
    from portal.integrations.models import ScannerIntegration
    from portal.integrations.registry import adapter_for
    from portal.integrations.vendor import Vendor
    from portal.labs.models import Lab
    from portal.practices.models import Membership, Practice, Role, User
    from sqlalchemy import select
    from tests import factories

    redirect = "http://127.0.0.1:5000/settings/scanners/oauth/callback"

    def sign_in(integration):
        answer = httpx.get(adapter_for(integration).authorize_url("load", redirect), follow_redirects=False)
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        adapter_for(integration).finish_authorization(code, redirect)
        db.session.commit()

    with app.app_context():
        practice = db.session.get(Practice, practice_id)
        lab = db.session.scalar(select(Lab).where(Lab.organization_id == practice.organization_id,
                                                  Lab.name == "Manual Lab"))
        admin_user = db.session.scalar(select(User).join(Membership).where(
            Membership.practice_id == practice_id, Membership.role == Role.ADMIN))
        factories.provider(practice, "Dr. Maya Chen")  # the sandbox's doctor
        people = [factories.patient(practice, "Scan", f"Patient{n}", chart=f"SCAN-{n:03d}") for n in range(SCAN_PATIENTS)]
        bodies = [{"first_name": p.first_name, "last_name": p.last_name, "chart_number": p.chart_number,
                   "date_of_birth": p.date_of_birth.isoformat()} for p in people]
        itero = ScannerIntegration(practice_id=practice_id, vendor=Vendor.ITERO, name="Load iTero",
                                   credentials=crypto.seal(dict(zip(("client_id", "client_secret"), ITERO_CLIENT))))
        itero.set_config(base_url=f"{box_url}/itero", oauth_base=f"{box_url}/itero/oauth")
        itero.labs = [lab]
        db.session.add(itero)
        db.session.commit()
        sign_in(itero)
        adapter_for(itero).accounts()
        db.session.commit()
        callback = base + urlsplit(admin.new_callback_url(itero)).path
        adapter_for(itero).pair(ITERO_ACCOUNT, callback)
        db.session.commit()
        medit = admin.create_integration(practice, Vendor.MEDIT, admin.IntegrationData("Load Medit", [lab.id], {
            "client_id": MEDIT_CLIENT[0], "client_secret": MEDIT_CLIENT[1], "auth_host": f"{box_url}/medit",
            "resource_host": f"{box_url}/medit", "webhook_secret": MEDIT_WEBHOOK_SECRET}), Actor.user(admin_user))
        db.session.commit()
        sign_in(medit)
        hook = base + urlsplit(admin.new_callback_url(medit)).path
        db.session.commit()
        return {"itero": itero.id, "medit": medit.id, "medit_webhook": hook, "patients": bodies}


def count_scans(app, scanners: dict, sent: dict) -> dict:
    """What became of each vendor's orders: one scan each (lost: none), at most one case each
    (duplicated: a second case, or a scan row beyond one, for one order), no notification still
    waiting to be acted on."""
    from sqlalchemy import false, func, select

    from portal.cases.models import LabCase
    from portal.extensions import db
    from portal.integrations.models import VendorEvent
    from portal.scans.models import Scan

    out = {}
    with app.app_context():
        for vendor in ("itero", "medit"):
            integration_id, made = scanners[vendor], sent["made"][vendor]
            scans = db.session.execute(select(Scan.order_id, Scan.source, Scan.case_id).where(
                Scan.integration_id == integration_id)).all()
            per_order: dict[str, int] = {}
            for order_id, _, _ in scans:
                per_order[order_id] = per_order.get(order_id, 0) + 1
            cases = db.session.execute(select(LabCase.origin_order_id, func.count()).where(
                LabCase.origin == vendor, LabCase.origin_order_id.in_(made) if made else false())
                .group_by(LabCase.origin_order_id)).all()
            events = dict(db.session.execute(select(VendorEvent.outcome, func.count()).where(
                VendorEvent.integration_id == integration_id).group_by(VendorEvent.outcome)).all())
            sources: dict[str, int] = {}
            for _, source, _ in scans:
                sources[source] = sources.get(source, 0) + 1
            answers = sent["answers"].get(vendor, {})
            out[vendor] = {
                "orders": len(made), "notifications": sent["queued"].get(vendor, 0),
                "tried": sum(answers.values()), "accepted": sum(v for k, v in answers.items() if str(k).startswith("2")),
                "answers": answers, "scans": sum(1 for o in made if per_order.get(o)),
                "lost": sum(1 for o in made if not per_order.get(o)),
                "duplicates": sum(n - 1 for n in per_order.values() if n > 1) + sum(n - 1 for _, n in cases if n > 1),
                "cases": len(cases), "sources": sources, "events": events,
                "waiting": events.get("pending", 0) + events.get("reading", 0),
                "p99": pct(sent["seconds"].get(vendor, []), 99),
            }
    return out


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
    from portal.audit.record import verify_chain
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
        chain_problems = sum(1 for _ in verify_chain())  # every process wrote into one chain, signed alike
    return {"chain_problems": chain_problems, "applied": applied, "lost": lost, "duplicates": duplicates + moved_twice + person_dupes,
            "moved_twice": moved_twice, "person_moves_audited": sum(n for _, _, n in person_moves),
            "person_duplicates": person_dupes, "outcomes": outcomes, "pending": pending,
            "rows_not_accepted": stored_extra, "lab_noop_or_ignored_audits": not_applied}


def settle(app, until: float) -> float:
    """Wait until no lab event and no scanner notification is waiting (or `until`); returns the
    seconds waited."""
    from sqlalchemy import func, select

    from portal.dispatch.models import LabEvent
    from portal.extensions import db
    from portal.integrations.models import VendorEvent

    started = time.monotonic()
    with app.app_context():
        while time.time() < until:
            pending = db.session.scalar(select(func.count()).select_from(LabEvent).where(LabEvent.outcome == "pending"))
            pending += db.session.scalar(select(func.count()).select_from(VendorEvent).where(
                VendorEvent.outcome.in_(("pending", "reading"))))
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
    ctx = mp.get_context("fork")
    box_pipe, box_end = ctx.Pipe()
    done = ctx.Event()  # set once the labs have posted all their events: the load phase ends
    box_proc = ctx.Process(target=scanner_proc, args=(box_end, done), daemon=True)
    box_proc.start()
    box_url = box_pipe.recv()
    procs: list[subprocess.Popen] = []
    gunicorn = None
    try:
        t0 = time.perf_counter()
        seeded = seed(app, args.events, args.coordinators, args.cards, f"http://127.0.0.1:{stub_port}")
        print(f"  seeded in {time.perf_counter() - t0:.0f}s: "
              f"{sum(len(v) for v in seeded['labs'].values())} sent cases at 3 labs, "
              f"{args.coordinators} coordinators with {args.cards} cards each", flush=True)
        gunicorn, base = start_gunicorn(env, args.web_workers)
        scanners = connect_scanners(app, base, box_url, seeded["practice_id"])
        procs = start_workers(env, args.rq_workers, Config().RQ_QUEUE)
        time.sleep(2)
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("an RQ worker or rq cron exited at start")
        until = time.time() + args.seconds
        pipes, children = [], []
        box_pipe.send({"until": until, "every": args.scan_every, "medit_webhook": scanners["medit_webhook"],
                       "patients": scanners["patients"]})
        people = seeded["people"]
        groups = max(1, min(5, len(people)))
        for g in range(groups):
            mine = people[g::groups]
            if not mine:
                continue
            a, b = ctx.Pipe(False)
            p = ctx.Process(target=coordinator_proc, args=(base, mine, until, args.poll, b, args.timeout, done))
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
        for kind, pipe in sorted(pipes, key=lambda kp: kp[0] != "lab"):  # the labs first
            if kind == "coordinators" and not done.is_set():
                done.set()  # every lab event is posted: the coordinators and scanners stop too
                print(f"  the labs were done at {time.time() - started:.0f}s", flush=True)
            results[kind].append(pipe.recv())
        for p in children:
            p.join()
        load_s = time.time() - started
        notified = box_pipe.recv()  # the sandbox has posted every callback and webhook by now
        wait = settle(app, time.time() + args.settle)
        counted = count(app, seeded, {r["lab_id"]: r["accepted"] for r in results["lab"]})
        scans = count_scans(app, scanners, notified)
    finally:
        stop(procs)
        if gunicorn is not None:
            gunicorn.terminate()
            gunicorn.wait(10)
        stub_proc.kill()
        try:
            box_pipe.send("stop")
        except OSError:
            pass
        box_proc.join(10)
        if box_proc.is_alive():
            box_proc.kill()
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
    for vendor, found in scans.items():
        for k, v in found["answers"].items():
            codes[f"{vendor} {k}"] = codes.get(f"{vendor} {k}", 0) + v
    # 5xx answers, and requests that got no answer (a timeout, a reset: the exception's name)
    server_errors = sum(v for k, v in codes.items() if k.split()[-1].startswith("5"))
    client_errors = sum(v for k, v in codes.items() if not k.split()[-1].isdigit())
    accepted = sum(len(r["accepted"]) for r in results["lab"])
    return {"kill": kill, "killed_at": killed, "load_seconds": load_s, "settle_seconds": wait,
            "board_p95": pct(board + polls, 95), "board_page_p95": pct(board, 95), "poll_p95": pct(polls, 95),
            "move_p95": pct(moves, 95), "webhook_p99": pct(hook, 99), "webhook_p50": pct(hook, 50),
            "requests": {"board": len(board), "poll": len(polls), "move": len(moves), "webhook": len(hook)},
            "accepted": accepted, "repeats": sum(r["repeats"] for r in results["lab"]),
            "coordinator_moves": sum(r["moves"] for r in results["coordinators"]),
            "codes": codes, "errors": server_errors + client_errors, "server_errors": server_errors,
            "client_errors": client_errors, "scans": scans, **counted, "load": os.getloadavg()}


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
    for vendor, s in r["scans"].items():
        print(f"  {vendor}: {s['orders']} orders, {s['notifications']} notifications posted ({s['tried']} tried), "
              f"{s['accepted']} accepted (p99 {s['p99'] * 1000:.0f} ms), answers {s['answers']}; scans "
              f"{s['scans']} (by {s['sources']}), lost {s['lost']}, duplicates {s['duplicates']}; cases "
              f"{s['cases']}; notifications {s['events']}")
    print(f"  coordinator moves {r['coordinator_moves']} (audited {r['person_moves_audited']}); errors "
          f"{r['errors']} ({r['server_errors']} 5xx, {r['client_errors']} without an answer: timeouts, resets); "
          f"audit chain {'intact' if not r['chain_problems'] else str(r['chain_problems']) + ' problems'}")
    print(f"  answers {dict(sorted(r['codes'].items()))}")
    print(f"  load average {r['load'][0]:.2f} {r['load'][1]:.2f} {r['load'][2]:.2f}")


def table(results: list[dict]) -> None:
    """The figures as the README's table has them."""
    print("    run                    board p95  poll p95  move p95  webhook p99 (p50)  accepted applied lost dup"
          "  scans (lost, dup)  notif. accepted  5xx  no answer  load avg")
    for r in results:
        scans = r["scans"].values()
        print(f"    {'one worker SIGKILLed' if r['kill'] else 'all workers up':<22} "
              f"{r['board_p95'] * 1000:6.0f} ms {r['poll_p95'] * 1000:6.0f} ms {r['move_p95'] * 1000:6.0f} ms"
              f"  {r['webhook_p99'] * 1000:6.0f} ms ({r['webhook_p50'] * 1000:.0f} ms)"
              f"  {r['accepted']:7d} {r['applied']:7d} {r['lost']:4d} {r['duplicates']:3d}"
              f"  {sum(s['scans'] for s in scans):5d} ({sum(s['lost'] for s in scans)}, "
              f"{sum(s['duplicates'] for s in scans)})"
              f"  {sum(s['accepted'] for s in scans):5d}/{sum(s['notifications'] for s in scans):<5d}"
              f"  {r['server_errors']:4d} {r['client_errors']:6d}     {r['load'][0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="lab status events in all (three a case)")
    parser.add_argument("--coordinators", type=int, default=50)
    parser.add_argument("--cards", type=int, default=4, help="cards each coordinator moves (two moves a card)")
    parser.add_argument("--seconds", type=float, default=900,
                        help="the load phase's limit; it ends sooner, once the labs have posted every event")
    parser.add_argument("--settle", type=float, default=90, help="how long to wait for the queue afterwards")
    parser.add_argument("--poll", type=float, default=3.0, help="a coordinator's poll interval (BOARD_POLL_SECONDS)")
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument("--rq-workers", type=int, default=3)
    parser.add_argument("--lab-threads", type=int, default=4, help="concurrent posters per lab")
    parser.add_argument("--runs", default="plain,kill", help="plain (all workers up), kill (one SIGKILLed)")
    parser.add_argument("--scan-every", type=float, default=1.5,
                        help="seconds between two scanner steps (a new iTero order and a new Medit case each)")
    parser.add_argument("--timeout", type=float, default=30, help="a coordinator's HTTP timeout")
    parser.add_argument("--quick", action="store_true", help="600 events, 5 coordinators, 40 s")
    args = parser.parse_args()
    if args.quick:
        args.events, args.coordinators, args.cards, args.seconds, args.settle = 600, 5, 2, 40, 60
    if not (os.environ.get("DATABASE_URL", "").startswith("postgresql") and os.environ.get("REDIS_URL")):
        sys.exit("bench/load.py runs on PostgreSQL and a real Redis: set DATABASE_URL=postgresql://... and "
                 "REDIS_URL=redis://...; it drops every table there and empties that Redis database.")
    env = {"SECRET_KEY": "load-secret", "LM_ENV": "development", "PUBLIC_BASE_URL": "http://127.0.0.1",
           "LAB_API_TIMEOUT": "5", "DISPATCH_RETRY_SCHEDULE": "1,2,5", "OUTBOX_SWEEP_SECONDS": "5",
           "DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"],
           # The vendor sandbox is on loopback; the scans' files go to a folder of this run's.
           "SCANNER_ALLOWED_HOSTS": "127.0.0.1", "SCAN_STORE_DIR": tempfile.mkdtemp(prefix="load-scans-")}
    os.environ.update(env)
    print(f"load run: {args.events} lab events, {args.coordinators} coordinators, gunicorn -w {args.web_workers}, "
          f"{args.rq_workers} RQ workers + rq cron; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    failed, results = False, []
    for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
        result = one_run(args, env, kill=run == "kill")
        report(result)
        results.append(result)
        failed |= bool(result["lost"] or result["duplicates"] or result["errors"] or result["chain_problems"]
                       or any(s["lost"] or s["duplicates"] or s["waiting"] for s in result["scans"].values()))
    table(results)
    print("FAIL: events or scans lost or doubled, errors, or the audit chain broken" if failed
          else "PASS: nothing lost, nothing doubled, no 5xx, every request answered, the audit chain intact")
    shutil.rmtree(env["SCAN_STORE_DIR"], ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
