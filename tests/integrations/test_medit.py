"""Medit Link (docs/vendors/medit.md) over real HTTP: the adapter against the vendor sandbox
(sandbox/vendors.py) in this process, and the sandbox's signed webhooks delivered to
the portal served on loopback. docs/reliability.md W1, W3, W4, W6, W7 and W8 are asserted here."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select
from werkzeug.datastructures import Headers
from werkzeug.serving import make_server

from jobs import scanners as scanner_jobs
from portal import keyring as crypto
from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.extensions import db
from portal.integrations import oauth
from portal.integrations import services as admin
from portal.integrations.base import CallbackRejected, Notice
from portal.integrations.http import VendorError
from portal.integrations.medit import adapter as medit
from portal.integrations.medit import wire
from portal.integrations.models import ScannerIntegration, VendorEvent
from portal.integrations.registry import adapter_for
from portal.integrations.services import new_callback_url
from portal.integrations.sync import run_sync, store_notices
from portal.integrations.vendor import Jaw, OrderStage, Vendor
from portal.practices.models import utcnow
from portal.queue import get_queue
from portal.scans.models import FileState, InboxState, Scan
from sandbox.vendors import MEDIT_USER, Sandbox
from tests import factories
from tests.jobs import drain
from tests.integrations.signin import finish_sign_in

CLIENT_ID = "LabManagerTestMeditClient0000001"
CLIENT_SECRET = "LabManagerTestMeditSecret0000001"
WEBHOOK_SECRET = "medit-test-webhook-signing-secret"
REDIRECT = "http://localhost/admin/scanners/oauth/callback"


# -- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


@pytest.fixture(scope="module")
def portal_url(app):
    """The portal on a loopback port, for the sandbox's webhooks."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture()
def vendor(sandbox, app, monkeypatch):
    """A fresh sandbox with our Medit client; only loopback's 127.0.0.1 on the allow-list."""
    sandbox.reset()
    sandbox.add_client("medit", CLIENT_ID, CLIENT_SECRET)
    monkeypatch.setitem(app.config, "SCANNER_ALLOWED_HOSTS", "127.0.0.1")
    yield sandbox
    sandbox.drain()


@pytest.fixture()
def queue(app, db):
    q = get_queue()
    _clean(q)
    yield q
    _clean(q)


def _clean(q) -> None:
    """No job queued or scheduled, no claim left (what drain() runs and enqueue_once checks). Other
    registries are left alone: jobs of earlier tests may be half gone from them."""
    q.empty()
    for key in q.connection.scan_iter("labmanager:once:*"):
        q.connection.delete(key)
    for job_id in q.scheduled_job_registry.get_job_ids():
        q.scheduled_job_registry.remove(job_id)


def values(vendor, **changes) -> dict:
    return {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "auth_host": vendor.medit_url,
            "resource_host": vendor.medit_url, "webhook_secret": WEBHOOK_SECRET, **changes}


def added(world, vendor, **changes) -> ScannerIntegration:
    """A Medit integration as an admin adds it (Settings → Integrations), for the sandbox."""
    integration = admin.create_integration(
        world.practice, Vendor.MEDIT, admin.IntegrationData("Front desk", [world.labs["email"].id],
                                                            values(vendor, **changes)),
        Actor.user(world.users["admin"]))
    db.session.commit()
    return integration


@pytest.fixture()
def scanner(world, vendor):
    """A Medit integration of the practice, for the sandbox, signed in."""
    integration = added(world, vendor)
    connect(integration)
    return integration


def connect(integration, state: str = "state-from-the-session"):
    adapter = adapter_for(integration)
    answer = httpx.get(adapter.authorize_url(state, REDIRECT))  # the sandbox's sign-in page approves at once
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    query = parse_qs(back.query)
    assert (f"{back.scheme}://{back.netloc}{back.path}", query["state"]) == (REDIRECT, [state])
    adapter.finish_authorization(query["code"][0], REDIRECT)
    db.session.commit()
    return adapter


@pytest.fixture()
def hooked(scanner, vendor, portal_url):
    """The sandbox sends its webhooks for our group to the integration's notification URL."""
    url = portal_url + urlsplit(new_callback_url(scanner)).path
    db.session.commit()
    vendor.set_medit_webhook(url, WEBHOOK_SECRET)
    return url


def sync(scanner, vendor) -> dict:
    """A poll, once our clock has passed the sandbox's last change: the sandbox never gives two
    changes the same millisecond, so in a burst its stamps run a few milliseconds ahead of the
    wall clock, and a window ending "now" would leave them to the next poll (whose overlap takes
    them: that is tested below)."""
    deadline = time.monotonic() + 5
    while time.time() * 1000 <= vendor.core.last_ms and time.monotonic() < deadline:
        time.sleep(0.002)
    return run_sync(scanner.id)


def patient(world, first="Ana", last="Silva", chart="MED-1"):
    p = factories.patient(world.practice, first, last, chart=chart)
    db.session.commit()
    return p


def medit_patient(p) -> dict:
    return {"name": f"{p.first_name} {p.last_name}", "code": p.chart_number}


def scan_of(case_uuid: str) -> Scan:
    db.session.expire_all()
    return db.session.scalar(select(Scan).where(Scan.order_id == case_uuid))


def cases_of(p) -> list[LabCase]:
    return list(db.session.scalars(select(LabCase).where(LabCase.patient_id == p.id)))


def events() -> list[VendorEvent]:
    db.session.expire_all()
    return list(db.session.scalars(select(VendorEvent).order_by(VendorEvent.id)))


def actions() -> list[str]:
    return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def signed(raw: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def delivered(vendor) -> list[int]:
    assert vendor.drain(10)
    return [d["status"] for d in vendor.deliveries()]


# -- configuration and sign-in ------------------------------------------------------------------------

def test_the_production_hosts_and_scopes_are_the_defaults(world, app, monkeypatch):
    monkeypatch.setitem(app.config, "SCANNER_ALLOWED_HOSTS", "openapi-auth.meditlink.com")
    integration = factories.integration(world.practice, Vendor.MEDIT)
    integration.credentials = crypto.seal({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})

    url = urlsplit(adapter_for(integration).authorize_url("s1", "https://portal.example/cb"))

    assert (url.scheme, url.hostname, url.path) == ("https", "openapi-auth.meditlink.com", "/oauth/authorize")
    assert parse_qs(url.query) == {"client_id": [CLIENT_ID], "response_type": ["code"], "state": ["s1"],
                                   "redirect_uri": ["https://portal.example/cb"],
                                   "scope": ["USER GROUP CASE FILE ORDER offline_access"]}


def test_sign_in_trades_the_code_for_tokens_and_learns_the_clinics_group(scanner, vendor):
    token_call = vendor.requests("medit.token")[-1]
    me_call = vendor.requests("medit.me")[-1]

    assert token_call["auth_scheme"] == "Basic"
    assert token_call["body"] == {"grant_type": "authorization_code", "code": token_call["body"]["code"],
                                  "redirect_uri": REDIRECT}
    assert me_call["headers"]["x-meditlink-client-id"] == CLIENT_ID and me_call["auth_scheme"] == "Bearer"
    assert scanner.connected and scanner.config["group_uuid"] == MEDIT_USER["group"]["uuid"]
    assert scanner.config["group_name"] == "Bright Smile Dental"
    tokens = oauth.read(scanner.id)
    assert tokens.access_token and tokens.refresh_token and tokens.access_token not in scanner.tokens

    said = adapter_for(scanner).test_connection()

    assert said == ("Medit Link answered: signed in as Front Desk (frontdesk@brightsmile.test), "
                    "group Bright Smile Dental.")


def test_a_sign_in_without_a_refresh_token_is_refused_and_stores_nothing(world, vendor):
    integration = added(world, vendor)
    integration.set_config(scopes="USER GROUP CASE FILE ORDER")  # as if edited by hand: no offline_access
    db.session.commit()

    with pytest.raises(VendorError, match="no refresh token"):
        connect(integration)

    assert not integration.connected and integration.tokens == "" and "group_uuid" not in integration.config


# -- polling --------------------------------------------------------------------------------------------

def test_polling_pages_through_the_window_and_moves_the_cursor(world, scanner, vendor, monkeypatch):
    monkeypatch.setattr(wire, "PAGE_SIZE", 2)
    people = [patient(world, "Pat", f"Number{i}", f"MED-{i}") for i in range(5)]
    made = [vendor.add_medit_case(patient=medit_patient(p)) for p in people]

    first = sync(scanner, vendor)

    searches = vendor.requests("medit.cases_search")
    assert first == {"new": 5}
    assert [s["query"]["page"] for s in searches] == ["0", "1", "2"]
    assert {(s["query"]["size"], s["query"]["schema"]) for s in searches} == {("2", "latest")}
    assert {s["headers"]["x-meditlink-group-uuid"] for s in searches} == {MEDIT_USER["group"]["uuid"]}
    assert {s["headers"]["x-meditlink-client-id"] for s in searches} == {CLIENT_ID}
    start, end = int(searches[0]["query"]["start"]), int(searches[0]["query"]["end"])
    assert {(s["query"]["start"], s["query"]["end"]) for s in searches} == {(str(start), str(end))}
    assert end - start == 7 * 24 * 3600 * 1000  # the first poll looks back a week
    db.session.refresh(scanner)
    assert scanner.sync_cursor == str(end) and scanner.last_error == ""
    assert sorted(s.order_id for s in db.session.scalars(select(Scan))) == sorted(c["uuid"] for c in made)

    again = sync(scanner, vendor)  # the overlap reads the last minutes again: nothing changed

    assert again == {"unchanged": 5}
    window = vendor.requests("medit.cases_search")[-1]["query"]
    assert int(window["start"]) == end - 5 * 60 * 1000

    monkeypatch.setattr(medit, "OVERLAP", dt.timedelta(0))
    db.session.refresh(scanner)
    cursor = int(scanner.sync_cursor)
    vendor.move_medit_case(made[2]["uuid"], status="COMPLETED", new_files=True)

    third = sync(scanner, vendor)

    assert third == {"updated": 1}  # only the case that changed since the cursor is in the window
    assert int(vendor.requests("medit.cases_search")[-1]["query"]["start"]) == cursor


def test_a_case_stamped_ahead_of_our_clock_comes_with_the_next_poll(world, scanner, vendor, monkeypatch):
    made = vendor.add_medit_case(patient=medit_patient(patient(world)))
    behind = utcnow() - dt.timedelta(seconds=2)  # our clock two seconds behind Medit's
    monkeypatch.setattr(medit, "utcnow", lambda: behind)

    assert run_sync(scanner.id) == {}  # the window ends before the case's dateUpdated

    monkeypatch.setattr(medit, "utcnow", utcnow)
    assert sync(scanner, vendor) == {"new": 1}  # the next window starts OVERLAP before the last end
    assert scan_of(made["uuid"]) is not None


def test_a_window_that_changes_while_we_page_is_read_again(world, scanner, vendor, monkeypatch):
    monkeypatch.setattr(wire, "PAGE_SIZE", 2)
    made = [vendor.add_medit_case(patient=medit_patient(patient(world, "Pat", f"N{i}", f"MED-{i}")))
            for i in range(4)]
    adapter = adapter_for(db.session.get(ScannerIntegration, scanner.id))
    pages = adapter.poll()
    seen = [next(pages).order_id, next(pages).order_id]  # page 0
    time.sleep(0.01)  # the change below is after the window's end
    vendor.move_medit_case(made[0]["uuid"], status="CAD")  # it leaves the window: the pages shift

    seen += [order.order_id for order in pages]

    assert made[2]["uuid"] not in seen  # shifted onto page 0, which was read already
    assert adapter.next_cursor is None  # so the cursor stays and the next poll reads the window again
    assert sync(scanner, vendor)["new"] == 4


def test_a_case_from_scan_to_cad_to_completed_makes_one_case_ready_with_its_scans(world, scanner, vendor):
    p = patient(world)
    made = vendor.add_medit_case(patient=medit_patient(p), status="SCAN", upload_status="STARTED")

    sync(scanner, vendor)
    scan = scan_of(made["uuid"])
    assert (scan.status, scan.stage, scan.current_files) == ("SCAN", OrderStage.IN_PROGRESS, [])
    # matched, but still being scanned (no file uploaded): it waits instead of joining a case
    assert (scan.patient_id, scan.matched_by, scan.inbox) == (p.id, "chart", InboxState.WAITING)
    assert scan.case_id is None and cases_of(p) == [] and "Still being scanned at Medit Link" in scan.problem
    assert (scan.patient_first_name, scan.patient_last_name, scan.patient_chart_number) == ("Ana", "Silva", "MED-1")

    vendor.move_medit_case(made["uuid"], status="CAD", upload_status="SUCCEED")
    sync(scanner, vendor)
    scan = scan_of(made["uuid"])
    assert (scan.status, scan.stage, scan.inbox) == ("CAD", OrderStage.IN_PROGRESS, InboxState.LINKED)
    case = scan.case  # its scan files are uploaded: the draft case is made
    assert (case.status, case.origin, case.origin_order_id) == (Status.DRAFT, "medit", made["uuid"])

    vendor.move_medit_case(made["uuid"], status="COMPLETED")
    sync(scanner, vendor)

    scan = scan_of(made["uuid"])
    assert (scan.status, scan.stage) == ("COMPLETED", OrderStage.READY)
    assert [c.id for c in cases_of(p)] == [case.id]
    files = {f.jaw: f for f in scan.current_files}
    assert set(files) == {Jaw.UPPER, Jaw.LOWER, Jaw.BITE}
    assert all(f.jaw_source == "file name" and f.kind == "scan" and f.format == "STL"
               and f.state is FileState.REFERENCE for f in files.values())
    upper = files[Jaw.UPPER]
    assert upper.url == f"{vendor.medit_url}/v1/files/{upper.ref}?type=stl"
    assert (files[Jaw.BITE].upper_file_id, files[Jaw.BITE].lower_file_id) == (upper.id, files[Jaw.LOWER].id)
    assert scan.vendor_updated_at == wire.parse_time(vendor.medit.cases[made["uuid"]]["dateUpdated"])


def test_a_completed_case_is_ready_only_once_its_scans_are_uploaded(world, scanner, vendor):
    p = patient(world)
    made = vendor.add_medit_case(patient=medit_patient(p), status="COMPLETED", upload_status="STARTED")

    sync(scanner, vendor)
    assert scan_of(made["uuid"]).stage is OrderStage.IN_PROGRESS

    vendor.move_medit_case(made["uuid"], upload_status="SUCCEED")
    sync(scanner, vendor)

    scan = scan_of(made["uuid"])
    assert scan.stage is OrderStage.READY and len(scan.current_files) == 3


def test_new_scan_files_on_a_case_replace_the_references(world, scanner, vendor):
    p = patient(world)
    made = vendor.add_medit_case(patient=medit_patient(p))
    sync(scanner, vendor)
    old = {f.ref for f in scan_of(made["uuid"]).current_files}

    vendor.move_medit_case(made["uuid"], new_files=True)
    assert sync(scanner, vendor) == {"updated": 1}

    scan = scan_of(made["uuid"])
    assert {f.ref for f in scan.files if f.replaced_at is not None} == old
    assert len(scan.current_files) == 3 and not old & {f.ref for f in scan.current_files}
    assert len(cases_of(p)) == 1


def test_other_files_are_references_and_unfinished_uploads_are_left_out(world, scanner, vendor):
    p = patient(world)
    made = vendor.add_medit_case(patient=medit_patient(p), files=[
        {"name": "Silva_Ana-UpperJawScan.stl.general.meditMesh"},
        {"name": "Silva_Ana-LowerJawScan.stl.general.meditMesh"},
        {"name": "Silva_Ana-Occlusion.stl"},
        {"name": "crown-36.stl", "fileType": "CAD_DATA"},
        {"name": "crown-36.cam", "fileType": "MILLING_DATA"},
        {"name": "smile.jpg", "fileType": "ATTACHED_DATA"},
        {"name": "extra-LowerJawScan.stl", "uploadStatus": "FAILED"},
    ])

    sync(scanner, vendor)

    scan = scan_of(made["uuid"])
    got = [(f.file_name, f.kind, f.format, f.jaw.value, bool(f.url)) for f in scan.current_files]
    assert got == [
        ("Silva_Ana-UpperJawScan.stl.general.meditMesh", "scan", "STL", "upper", True),
        ("Silva_Ana-LowerJawScan.stl.general.meditMesh", "scan", "STL", "lower", True),
        ("Silva_Ana-Occlusion.stl", "scan", "STL", "bite", True),
        ("crown-36.stl", "cad", "STL", "unknown", False),
        ("crown-36.cam", "cam", "CAM", "unknown", False),
        ("smile.jpg", "other", "JPG", "unknown", False),
    ]
    assert scan.stage is OrderStage.READY  # the failed upload is left out; nothing is still uploading


def test_a_scan_of_an_unknown_chart_number_waits_for_a_person(world, scanner, vendor):
    made = vendor.add_medit_case(patient={"name": "Maria de la Cruz", "code": "NOT-OURS"})

    sync(scanner, vendor)

    scan = scan_of(made["uuid"])
    assert (scan.patient_first_name, scan.patient_last_name) == ("Maria", "de la Cruz")
    assert scan.inbox is InboxState.PENDING and "chart number NOT-OURS" in scan.problem


def test_fetch_reads_one_case_and_an_unknown_one_is_none(world, scanner, vendor):
    made = vendor.add_medit_case(patient={"name": "Ana Silva", "code": "MED-1"})
    adapter = adapter_for(scanner)

    order = adapter.fetch(made["uuid"])

    assert (order.order_id, order.status, order.stage, order.patient.chart_number) == (
        made["uuid"], "COMPLETED", OrderStage.READY, "MED-1")
    assert vendor.requests("medit.case")[-1]["headers"]["x-meditlink-group-uuid"] == MEDIT_USER["group"]["uuid"]
    assert adapter.fetch("00000000-0000-0000-0000-000000000000") is None


def test_a_download_link_is_asked_for_when_needed(world, scanner, vendor):
    made = vendor.add_medit_case(patient={"name": "Ana Silva", "code": "MED-1"})
    ref = made["files"][0]["uuid"]

    url, name = adapter_for(scanner).download_link(ref)

    assert vendor.requests("medit.file")[-1]["query"] == {"type": "stl"}
    assert name.endswith(".zip") and httpx.get(url).content.startswith(b"PK")


# -- errors: recorded, recovered, refreshed -----------------------------------------------------------

def test_429_and_500_are_the_integrations_last_error_until_the_next_sync_recovers(world, scanner, vendor):
    made = vendor.add_medit_case(patient=medit_patient(patient(world)))
    vendor.fault("medit.cases_search", 429, retry_after=0)  # a wait asked for would hold the next sync back

    assert "HTTP 429" in sync(scanner, vendor)["error"]
    db.session.refresh(scanner)
    assert "HTTP 429" in scanner.last_error and scanner.last_error_at is not None and scanner.sync_cursor == ""

    vendor.fault("medit.cases_search", 500)
    sync(scanner, vendor)
    db.session.refresh(scanner)
    assert "HTTP 500" in scanner.last_error

    assert sync(scanner, vendor) == {"new": 1}
    db.session.refresh(scanner)
    assert (scanner.last_error, scanner.last_error_at) == ("", None) and scanner.sync_cursor
    assert scan_of(made["uuid"]) is not None
    assert [a for a in actions() if a.startswith("scanner.sync")] == [
        "scanner.sync_failed", "scanner.sync_failed", "scanner.sync_recovered"]


def test_a_token_refused_after_a_refresh_asks_to_connect_again(world, scanner, vendor):
    with vendor.core.lock:  # Medit forgot our grant: access and refresh tokens are both dead
        vendor.core.access.clear()
        vendor.core.refresh.clear()

    result = sync(scanner, vendor)

    assert "would not renew our access" in result["error"]
    db.session.refresh(scanner)
    assert "Connect the integration again" in scanner.last_error
    assert (vendor.counters["medit.refresh"], vendor.counters["medit.refresh_refused"]) == (1, 1)


def test_an_access_token_medit_expired_early_is_refreshed_once_and_the_call_made_again(world, scanner, vendor):
    vendor.add_medit_case(patient=medit_patient(patient(world)))
    before = oauth.read(scanner.id)
    vendor.expire_tokens("medit")

    assert sync(scanner, vendor) == {"new": 1}

    assert vendor.counters["medit.refresh"] == 1
    assert oauth.read(scanner.id).version == before.version + 1
    assert [r["status"] for r in vendor.requests("medit.cases_search")] == [401, 200]


@pytest.mark.parametrize("expired_by", ["medit", "our clock"])
def test_two_jobs_finding_the_token_expired_at_once_refresh_it_once(app, world, scanner, vendor, queue, expired_by):
    made = vendor.add_medit_case(patient=medit_patient(patient(world)))
    store_notices(scanner, [Notice("k-1", "case.updated", made["uuid"])])
    db.session.commit()
    _clean(queue)  # the two jobs are run below, by hand, at the same moment
    if expired_by == "medit":
        vendor.expire_tokens("medit")
    else:
        scanner.token_expires_at = utcnow() - dt.timedelta(seconds=1)
        db.session.commit()
    vendor.fault("medit.token", "hang", seconds=0.5)  # the refresh takes its time: the other job waits
    results, errors, scanner_id = {}, [], scanner.id  # the threads must not touch this session's objects

    def run(name, job):
        try:
            with app.app_context():
                results[name] = job(scanner_id)
                db.session.remove()
        except Exception as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("sync", scanner_jobs.sync)),
               threading.Thread(target=run, args=("events", scanner_jobs.handle_events))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert errors == []
    assert vendor.counters["medit.refresh"] == 1 and "medit.refresh_refused" not in vendor.counters
    assert "error" not in results["sync"] and results["events"] in (["new"], ["updated"], ["unchanged"])
    assert db.session.scalar(select(func.count(Scan.id))) == 1


def test_a_resource_host_off_the_allow_list_is_sent_nothing(world, scanner, vendor):
    scanner.set_config(resource_host=vendor.medit_url.replace("127.0.0.1", "localhost"))
    scanner.token_expires_at = utcnow() - dt.timedelta(seconds=1)  # not even a refresh may go out
    db.session.commit()
    calls = len(vendor.requests())

    result = sync(scanner, vendor)

    assert "not on the allowed hosts" in result["error"]
    assert len(vendor.requests()) == calls
    db.session.refresh(scanner)
    assert "localhost" in scanner.last_error


# -- webhooks ---------------------------------------------------------------------------------------------

def test_a_signed_webhook_is_stored_then_a_job_reads_the_case_and_updates_it(world, hooked, vendor, queue):
    p = patient(world)
    made = vendor.add_medit_case(patient=medit_patient(p), status="SCAN", upload_status="STARTED")

    assert delivered(vendor) == [204, 204]  # case.created, files.created
    stored = events()
    assert [(e.kind, e.order_ref, e.outcome) for e in stored] == [
        ("case.created", made["uuid"], "pending"), ("files.created", made["uuid"], "pending")]
    assert scan_of(made["uuid"]) is None  # the request only stored them (docs/reliability.md W5)
    drain(queue)
    assert scan_of(made["uuid"]).stage is OrderStage.IN_PROGRESS
    assert [e.outcome for e in events()] == ["done", "done"]

    vendor.move_medit_case(made["uuid"], status="COMPLETED", upload_status="SUCCEED")
    delivered(vendor)
    drain(queue)

    scan = scan_of(made["uuid"])
    assert (scan.stage, scan.source, len(scan.current_files)) == (OrderStage.READY, "callback", 3)
    assert len(cases_of(p)) == 1
    reads = vendor.requests("medit.case")
    assert reads and all(r["headers"]["x-meditlink-group-uuid"] == MEDIT_USER["group"]["uuid"] for r in reads)


@pytest.mark.parametrize("signature", [None, "", "00" * 32, "wrong-secret", "other-body"])
def test_a_missing_or_wrong_signature_is_401_and_stores_and_enqueues_nothing(world, hooked, queue, signature):
    raw = json.dumps({"schemaVersion": "2022-01-28", "dateIssued": 1, "case": {"uuid": "c-1"}}).encode()
    headers = {"Content-Type": "application/json", "x-meditlink-event-code": "case.updated"}
    if signature == "wrong-secret":
        headers["x-meditlink-signature"] = signed(raw, "not-the-secret")
    elif signature == "other-body":
        headers["x-meditlink-signature"] = signed(raw + b" ")
    elif signature is not None:
        headers["x-meditlink-signature"] = signature

    answer = httpx.post(hooked, content=raw, headers=headers)

    assert answer.status_code == 401 and "signature" in answer.json()["error"]
    assert events() == [] and queue.count == 0


def test_the_same_webhook_twice_is_one_event(world, hooked, vendor, queue):
    vendor.set_medit_webhook(hooked, WEBHOOK_SECRET, duplicate=True)
    made = vendor.add_medit_case(patient=medit_patient(patient(world)))

    assert delivered(vendor) == [204, 204, 204, 204]  # each of two deliveries, twice

    assert [e.kind for e in events()] == ["case.created", "files.created"]
    drain(queue)
    assert scan_of(made["uuid"]).stage is OrderStage.READY
    assert db.session.scalar(select(func.count(Scan.id))) == 1


def test_webhooks_out_of_order_leave_the_case_as_medit_has_it(world, hooked, vendor, queue):
    p = patient(world)
    vendor.set_medit_webhook(hooked, WEBHOOK_SECRET, hold=True)
    made = vendor.add_medit_case(patient=medit_patient(p), status="SCAN", upload_status="STARTED")
    vendor.move_medit_case(made["uuid"], status="CAD", upload_status="SUCCEED")
    vendor.move_medit_case(made["uuid"], status="COMPLETED")

    assert vendor.flush_medit_webhooks(reverse=True) == 5
    assert delivered(vendor) == [204] * 5
    sent = vendor.deliveries()  # newest first: the case as COMPLETED arrives before it was created
    assert [d["body"]["case"]["status"] for d in sent[:2]] == ["COMPLETED", "CAD"]
    assert [e.kind for e in events()] == ["case.updated", "case.updated", "files.upload.updated",
                                          "files.created", "case.created"]
    drain(queue)

    scan = scan_of(made["uuid"])
    assert (scan.status, scan.stage, len(scan.current_files)) == ("COMPLETED", OrderStage.READY, 3)
    assert len(cases_of(p)) == 1 and {e.outcome for e in events()} == {"done"}


def test_a_deleted_case_shows_on_the_scan_and_leaves_the_lab_case_alone(world, hooked, vendor, queue):
    p = patient(world)
    made = vendor.add_medit_case(patient=medit_patient(p))
    delivered(vendor)
    drain(queue)
    case = scan_of(made["uuid"]).case

    vendor.delete_medit_case(made["uuid"])
    delivered(vendor)
    drain(queue)

    scan = scan_of(made["uuid"])
    assert scan.stage is OrderStage.DELETED and len(scan.current_files) == 3  # the history stays
    assert scan.case.id == case.id and scan.case.status is Status.DRAFT
    assert events()[-1].kind == "case.deleted" and events()[-1].outcome == "done"
    assert actions().count("scan.deleted_at_vendor") == 1

    late = json.dumps({"schemaVersion": "2022-01-28", "dateIssued": 2, "case": {"uuid": made["uuid"]}}).encode()
    answer = httpx.post(hooked, content=late, headers={"x-meditlink-signature": signed(late),
                                                       "x-meditlink-event-code": "case.updated"})
    assert answer.status_code == 204
    drain(queue)  # a late update re-reads a case that is gone: still deleted, nothing more written
    assert scan_of(made["uuid"]).stage is OrderStage.DELETED and actions().count("scan.deleted_at_vendor") == 1
    assert events()[-1].outcome == "ignored"


def test_a_new_webhook_secret_accepts_the_old_one_for_a_day(world, scanner, vendor):
    admin.update_integration(scanner, admin.IntegrationData(
        "Front desk", [world.labs["email"].id],
        values(vendor, client_id="", client_secret="", webhook_secret="the-new-signing-secret")),
        Actor.user(world.users["admin"]))  # blank secrets keep the stored ones
    db.session.commit()
    raw = json.dumps({"schemaVersion": "2022-01-28", "dateIssued": 3, "case": {"uuid": "c-9"}}).encode()

    for secret in (WEBHOOK_SECRET, "the-new-signing-secret"):
        notices = adapter_for(scanner).verify_callback(Headers({"x-meditlink-signature": signed(raw, secret)}), raw)
        assert [(n.key, n.order_ref, n.kind) for n in notices] == [(hashlib.sha256(raw).hexdigest(), "c-9", "case")]
    assert scanner.connected  # the same client: still signed in

    scanner.set_config(previous_webhook_secret_until=(utcnow() - dt.timedelta(seconds=1)).isoformat())
    with pytest.raises(CallbackRejected) as refused:
        adapter_for(scanner).verify_callback(Headers({"x-meditlink-signature": signed(raw)}), raw)
    assert refused.value.status == 401


def test_a_signed_body_names_each_case_once_and_other_events_name_none(world, scanner):
    adapter = adapter_for(scanner)

    def notices(body: dict, code: str = "") -> list[tuple[str, str]]:
        raw = json.dumps(body).encode()
        heads = Headers({"x-meditlink-signature": signed(raw), "x-meditlink-event-code": code})
        return [(n.kind, n.order_ref) for n in adapter.verify_callback(heads, raw)]

    files = [{"uuid": "f1", "caseUuid": "c1"}, {"uuid": "f2", "caseUuid": "c1"}, {"uuid": "f3", "caseUuid": "c2"}]
    assert notices({"files": files}, "files.upload.updated") == [("files.upload.updated", "c1"),
                                                                ("files.upload.updated", "c2")]
    assert notices({"order": {"uuid": "o1", "caseUuid": "c3", "status": "ACCEPTED"}}, "order.updated") == [
        ("order.updated", "c3")]
    assert notices({"patient": {"uuid": "p1", "name": "Ana Silva"}}, "patient.updated") == []
    raw = b"not json"
    with pytest.raises(CallbackRejected) as refused:
        adapter.verify_callback(Headers({"x-meditlink-signature": signed(raw)}), raw)
    assert refused.value.status == 422
    raw = json.dumps({"order": {"uuid": "o1", "caseUuid": "c\u00003"}}).encode()
    with pytest.raises(CallbackRejected) as refused:
        adapter.verify_callback(Headers({"x-meditlink-signature": signed(raw)}), raw)
    assert refused.value.status == 422 and "NUL" in str(refused.value)


# -- the mapping ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, first, last", [
    ("Ana Silva", "Ana", "Silva"),
    ("  Ana   Maria  Silva ", "Ana Maria", "Silva"),
    ("Silva, Ana Maria", "Ana Maria", "Silva"),
    ("Ana da Silva", "Ana", "da Silva"),
    ("Pieter van der Berg", "Pieter", "van der Berg"),
    ("John Smith Jr.", "John", "Smith Jr."),
    ("Van Morrison", "Van", "Morrison"),
    ("Cher", "", "Cher"),
    ("홍길동", "", "홍길동"),
    ("", "", ""),
])
def test_medits_one_name_is_split_into_first_and_last(name, first, last):
    assert wire.split_name(name) == (first, last)


@pytest.mark.parametrize("status, uploads, stage", [
    ("COMPLETED", ["SUCCEED", "SUCCEED"], OrderStage.READY),
    ("COMPLETED", ["SUCCEED", "STARTED"], OrderStage.IN_PROGRESS),
    ("COMPLETED", ["SUCCEED", "FAILED"], OrderStage.READY),
    ("COMPLETED", ["LOCAL_ONLY"], OrderStage.IN_PROGRESS),
    ("COMPLETED", [], OrderStage.IN_PROGRESS),
    ("MILL", ["SUCCEED"], OrderStage.IN_PROGRESS),
    ("NEED_PROCESSING", ["SUCCEED"], OrderStage.IN_PROGRESS),
    ("FORM", [], OrderStage.IN_PROGRESS),
])
def test_stage_from_status_and_scan_uploads(status, uploads, stage):
    files = [{"fileType": "SCAN_DATA", "uploadStatus": u} for u in uploads] + \
        [{"fileType": "CAD_DATA", "uploadStatus": "STARTED"}]  # design data never holds a scan back
    assert wire.stage_for(status, files) is stage


def test_medit_times_are_epoch_milliseconds_or_iso():
    assert wire.parse_time(1764496800123) == dt.datetime(2025, 11, 30, 10, 0, 0, 123000)
    assert wire.parse_time("2025-11-30T10:00:00.123Z") == dt.datetime(2025, 11, 30, 10, 0, 0, 123000)
    assert wire.parse_time(None) is None and wire.parse_time("soon") is None
    assert wire.epoch_ms(dt.datetime(2025, 11, 30, 10, 0, 0, 123000)) == 1764496800123


# -- the admin pages end to end ----------------------------------------------------------------------------

def test_an_admin_connects_medit_through_the_settings_pages(client, login, world, app, vendor, portal_url, queue,
                                                            monkeypatch):
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", portal_url)
    login("admin")
    created = client.post("/admin/scanners/new?vendor=medit", {
        "name": "Front desk i700", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "auth_host": vendor.medit_url, "resource_host": vendor.medit_url, "webhook_secret": WEBHOOK_SECRET,
        "lab_ids": [world.labs["email"].id]})
    assert created.status_code == 303, created.get_data(as_text=True)
    integration = db.session.scalar(select(ScannerIntegration).where(ScannerIntegration.name == "Front desk i700"))

    connect = client.post(f"/admin/scanners/{integration.id}/connect")
    assert connect.status_code == 303 and connect.headers["Location"].startswith(f"{vendor.medit_url}/oauth/authorize?")
    at_medit = httpx.get(connect.headers["Location"])  # the person's browser at Medit's sign-in page
    back = at_medit.headers["Location"]
    assert back.startswith(f"{portal_url}/admin/scanners/oauth/callback?code=")
    done = finish_sign_in(client, back[len(portal_url):])  # ... and back with us, in the same session

    assert done.status_code == 303, done.get_data(as_text=True)
    db.session.expire_all()
    integration = db.session.get(ScannerIntegration, integration.id)
    assert integration.connected and integration.config["group_uuid"] == MEDIT_USER["group"]["uuid"]
    tested = client.post(f"/admin/scanners/{integration.id}/test").get_data(as_text=True)
    assert "signed in as Front Desk" in tested and "group Bright Smile Dental" in tested
    page = client.post(f"/admin/scanners/{integration.id}/callback-url").get_data(as_text=True)
    [hook] = re.findall(re.escape(portal_url) + r"/api/scanners/hooks/[A-Za-z0-9_-]{43}", page)
    vendor.set_medit_webhook(hook, WEBHOOK_SECRET)  # what the admin enters in Medit's developer console

    p = patient(world)
    made = vendor.add_medit_case(patient=medit_patient(p))
    assert delivered(vendor) == [204, 204]
    drain(queue)
    assert scan_of(made["uuid"]).case.patient_id == p.id

    vendor.set_medit_webhook("", "")  # no webhook this time: "Sync now" brings it
    later = vendor.add_medit_case(patient=medit_patient(p), status="SCAN", upload_status="STARTED")
    assert client.post(f"/admin/scanners/{integration.id}/sync").status_code == 303
    drain(queue)
    assert scan_of(later["uuid"]).stage is OrderStage.IN_PROGRESS
    assert [a for a in actions() if a.startswith("scanner.")][:5] == [
        "scanner.created", "scanner.signed_in", "scanner.connected", "scanner.callback_url_renewed",
        "scanner.sync_requested"]

