"""The pages a person uses: the scan inbox (/scans), a scan's page, the case page's Scans panel,
and Settings → Integrations (/admin/scanners). Full page and htmx fragment, roles, another practice's
ids (404), CSRF, credentials encrypted and never rendered, and an audit row for every action.

The vendor round trips (connect, pair, test, sync, disconnect against a vendor) belong to the
adapters' own tests over the vendor sandbox; here the settings pages are driven with the vendors
offered as if their adapters were installed, and the vendor buttons only where no adapter is
involved (the refusals, and a vendor without an adapter)."""
from __future__ import annotations

import datetime as dt
import html as html_module
import json
import re

import pytest
from sqlalchemy import func, select, text

from portal import keyring as crypto
from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.extensions import db
from portal.integrations import registry
from portal.integrations import services as admin
from portal.integrations.models import ScannerIntegration
from portal.integrations.vendor import Asset, Jaw, OrderStage, PatientRef, RxItem, Vendor, VendorOrder
from portal.scans import services
from portal.scans.models import InboxState, Scan
from tests import factories

T0 = dt.datetime(2026, 11, 30, 9, 0)
SECRET = "s3cret-Value-that-must-never-show"
CLIENT_ID = "client-id-that-must-never-show"


def vendor_order(ref: PatientRef, *, order_id="ORD-1", at=T0, assets=None, teeth=("36",), status="Completed",
                 stage=OrderStage.READY) -> VendorOrder:
    assets = assets if assets is not None else (
        Asset("a-upper", "upper.stl", "STL", jaw=Jaw.UPPER, jaw_source="vendor", size_bytes=2_400_000,
              vertex_count=40_000, triangle_count=80_000, url="https://x.test/a-upper"),
        Asset("a-lower", "lower.stl", "STL", jaw=Jaw.LOWER, jaw_source="file name"),
        Asset("a-bite", "bite.stl", "STL", jaw=Jaw.BITE, jaw_source="vendor"),
    )
    return VendorOrder(Vendor.ITERO, order_id, status, stage, ref, updated_at=at, doctor_name="Dr. Test",
                       procedure="Crown", items=(RxItem(tuple(teeth), "crown", "zirconia", "A2"),),
                       assets=tuple(assets), history=(("Scanning", at - dt.timedelta(hours=1)), (status, at)))


def ref_of(patient) -> PatientRef:
    return PatientRef(patient.first_name, patient.last_name, patient.chart_number, patient.date_of_birth)


@pytest.fixture()
def scanner(world):
    i = factories.integration(world.practice, Vendor.ITERO, labs=[world.labs["email"]])
    db.session.commit()
    return i


def ingest(world, scanner, order, practice=None):
    result = services.ingest((practice or world.practice).id, order, actor=Actor.vendor(scanner, "test"),
                             source="poll", integration=scanner)
    db.session.commit()
    return result.scan


def unknown(world, scanner, order_id="ORD-1", **kw) -> Scan:
    """A scan nobody matches: it waits in the inbox."""
    return ingest(world, scanner, vendor_order(PatientRef("Nora", "Nobody", "X-999", dt.date(1970, 1, 1)),
                                               order_id=order_id, **kw))


def audit(action: str, entity_id=None) -> list[AuditEvent]:
    stmt = select(AuditEvent).where(AuditEvent.action == action)
    if entity_id is not None:
        stmt = stmt.where(AuditEvent.entity_id == str(entity_id))
    return list(db.session.scalars(stmt.order_by(AuditEvent.seq)))


def rows() -> int:
    return db.session.scalar(select(func.count(AuditEvent.id)))


# ==== the inbox ===================================================================================

def test_inbox_full_page_and_fragment(client, login, world, scanner):
    scan = unknown(world, scanner)
    login()
    page = client.get("/scans/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<html" in html and "HX-Request" in page.headers["Vary"]
    assert f'id="scan-{scan.id}"' in html and "Nora Nobody" in html and "chart X-999" in html
    assert "No patient of this practice has chart number X-999" in html
    assert 'class="chip jaw-upper"' in html and 'class="chip jaw-bite"' in html
    assert "Needs a person" in html and "On cases" in html and "Dismissed" in html

    fragment = client.hx("/scans/?tab=pending", target="inbox-body")
    body = fragment.get_data(as_text=True)
    assert fragment.status_code == 200 and "<html" not in body
    assert body.lstrip().startswith('<div id="inbox-body"') and f'id="scan-{scan.id}"' in body


def test_tabs_vendor_filter_and_paging(client, login, world, scanner):
    waiting = unknown(world, scanner, order_id="W-1")
    patient = factories.patient(world.practice, "Ana", "Silva")
    db.session.commit()
    linked = ingest(world, scanner, vendor_order(ref_of(patient), order_id="L-1"))
    assert linked.inbox is InboxState.LINKED
    login()

    on_cases = client.get("/scans/?tab=linked").get_data(as_text=True)
    assert f'id="scan-{linked.id}"' in on_cases and f'id="scan-{waiting.id}"' not in on_cases
    assert linked.case.number in on_cases
    assert f'id="scan-{waiting.id}"' not in client.get("/scans/?tab=pending&vendor=medit").get_data(as_text=True)
    assert f'id="scan-{waiting.id}"' in client.get("/scans/?tab=pending&vendor=itero").get_data(as_text=True)
    assert client.get("/scans/?tab=nonsense&vendor=nonsense").status_code == 200  # read as the defaults

    for n in range(3):
        unknown(world, scanner, order_id=f"P-{n}", at=T0 + dt.timedelta(minutes=n))
    import portal.scans.queries as inbox

    first = inbox.list_scans(world.practice.id, InboxState.PENDING, size=2)
    second = inbox.list_scans(world.practice.id, InboxState.PENDING, page=2, size=2)
    assert first.has_more and len(first.scans) == 2 and not second.has_more
    assert {s.id for s in first.scans}.isdisjoint({s.id for s in second.scans})


def test_the_inbox_costs_the_same_statements_for_5_or_25_scans(client, login, world, scanner):
    from tests.board.test_board import StatementCounter

    login()

    def statements(n: int) -> int:
        for i in range(n):
            patient = factories.patient(world.practice)
            factories.case(world, patient_obj=patient, commit=False), factories.case(world, patient_obj=patient)
            ingest(world, scanner, vendor_order(ref_of(patient), order_id=f"N{n}-{i}"))  # two drafts: waits
        with StatementCounter(db.engine) as counter:
            assert client.get("/scans/").status_code == 200
        return counter.count

    small = statements(5)
    large = statements(20)
    print("statements for the inbox page (5, 25 scans):", small, large)
    assert large == small


def test_the_top_bar_counts_scans_that_need_a_person(client, login, world, scanner):
    login()
    assert 'id="pending-scans"' in client.get("/").get_data(as_text=True)
    assert 'class="nav-count"' not in client.get("/").get_data(as_text=True)
    unknown(world, scanner, order_id="A")
    unknown(world, scanner, order_id="B")
    board = client.get("/").get_data(as_text=True)
    assert re.search(r'id="pending-scans".*?<span class="nav-count">2</span>', board, re.S)


def test_a_coordinator_matches_a_scan_to_a_patient_and_a_case_is_created(client, login, world, scanner):
    scan = unknown(world, scanner)
    # Added after the scan came in: the scanner's name and birth date are hers, so no question is asked.
    patient = factories.patient(world.practice, "Nora", "Nobody", dob=dt.date(1970, 1, 1))
    db.session.commit()
    login()

    options = client.hx(f"/scans/{scan.id}/patients?q=nobody").get_data(as_text=True)
    assert f'value="{patient.id}"' in options and "Nobody, Nora" in options

    response = client.post(f"/scans/{scan.id}/patient", {"patient_id": patient.id}, htmx=f"scan-{scan.id}")
    body = response.get_data(as_text=True)
    assert response.status_code == 200 and body.lstrip().startswith(f'<tbody id="scan-{scan.id}"')
    assert re.search(r'<a id="pending-scans" href="/scans/" hx-swap-oob="outerHTML"', body)  # the count follows
    db.session.refresh(scan)
    assert scan.inbox is InboxState.LINKED and scan.patient_id == patient.id and scan.matched_by == "person"
    assert f"is on a new draft case {scan.case.number}" in body
    assert [e.actor_label for e in audit("scan.matched", scan.id)] == [world.users["coordinator"].email]
    assert audit("case.scan_linked", scan.case_id)


def test_matching_without_htmx_redirects_with_a_message(client, login, world, scanner):
    scan = unknown(world, scanner)
    patient = factories.patient(world.practice, "Nora", "Nobody", dob=dt.date(1970, 1, 1))
    db.session.commit()
    login()
    response = client.post(f"/scans/{scan.id}/patient", {"patient_id": patient.id, "next": "/scans/?tab=pending"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/scans/?tab=pending")
    assert "Matched to Nora Nobody" in client.get("/scans/").get_data(as_text=True)
    evil = client.post(f"/scans/{scan.id}/restore", {"next": "https://evil.test/"})
    assert evil.status_code == 422  # not dismissed; and a foreign `next` is never followed


@pytest.mark.parametrize("value", ["", "abc", "other-practice"])
def test_a_bad_patient_choice_is_refused_beside_the_control_and_changes_nothing(client, login, world, scanner, value):
    scan = unknown(world, scanner)
    if value == "other-practice":
        value = factories.patient(world.other_practice).id
        db.session.commit()
    login()
    before = rows()
    response = client.post(f"/scans/{scan.id}/patient", {"patient_id": value}, htmx=f"scan-{scan.id}")
    body = response.get_data(as_text=True)
    assert response.status_code == 422
    assert re.search(r'<details class="row-menu" open.*Choose the patient from the list\.</p>', body, re.S)
    plain = client.post(f"/scans/{scan.id}/patient", {"patient_id": value})
    assert plain.status_code == 422 and "<html" in plain.get_data(as_text=True)
    assert "Choose the patient from the list." in plain.get_data(as_text=True)
    db.session.refresh(scan)
    assert scan.patient_id is None and scan.inbox is InboxState.PENDING and rows() == before


def test_choosing_one_of_the_patients_open_cases(client, login, world, scanner):
    patient = factories.patient(world.practice)
    first, second = factories.case(world, patient_obj=patient), factories.case(world, patient_obj=patient)
    scan = ingest(world, scanner, vendor_order(ref_of(patient)))
    assert scan.inbox is InboxState.PENDING and "2 open cases" in scan.problem
    login()
    page = client.get("/scans/").get_data(as_text=True)
    assert f'name="case_id" value="{second.id}"' in page and "Put on a case" in page

    bad = client.post(f"/scans/{scan.id}/case", {"case_id": "nope"}, htmx=f"scan-{scan.id}")
    assert bad.status_code == 422 and "Choose one of the patient&#39;s open cases." in bad.get_data(as_text=True)
    stranger = factories.case(world, practice=world.other_practice)
    assert client.post(f"/scans/{scan.id}/case", {"case_id": stranger.id}, htmx=f"scan-{scan.id}").status_code == 422

    ok = client.post(f"/scans/{scan.id}/case", {"case_id": second.id}, htmx=f"scan-{scan.id}")
    assert ok.status_code == 200 and f"The scan is on {second.number}." in ok.get_data(as_text=True)
    db.session.refresh(scan)
    assert scan.case_id == second.id and scan.inbox is InboxState.LINKED
    after = json.loads(audit("case.scan_linked", second.id)[-1].after)
    assert after["scan_id"] == scan.id and not after["created_from_scan"]
    again = client.post(f"/scans/{scan.id}/case", {"case_id": first.id}, htmx=f"scan-{scan.id}")
    assert again.status_code == 422 and "already on" in again.get_data(as_text=True)


def test_creating_a_new_case_from_a_waiting_scan(client, login, world, scanner):
    patient = factories.patient(world.practice)
    factories.case(world, patient_obj=patient), factories.case(world, patient_obj=patient)
    scan = ingest(world, scanner, vendor_order(ref_of(patient)))
    login()
    response = client.post(f"/scans/{scan.id}/new-case", htmx=f"scan-{scan.id}")
    assert response.status_code == 200
    db.session.refresh(scan)
    assert scan.case.origin_order_id == "ORD-1" and scan.case.status is Status.DRAFT
    assert f"New draft case {scan.case.number}" in response.get_data(as_text=True)
    assert json.loads(audit("case.scan_linked", scan.case_id)[-1].after)["created_from_scan"] is True
    assert db.session.scalar(select(func.count(LabCase.id)).where(LabCase.patient_id == patient.id)) == 3


def test_dismiss_needs_a_reason_and_restore_brings_it_back(client, login, world, scanner):
    scan = unknown(world, scanner)
    login()
    refused = client.post(f"/scans/{scan.id}/dismiss", {"reason": "  "}, htmx=f"scan-{scan.id}")
    body = refused.get_data(as_text=True)
    assert refused.status_code == 422 and "Say why the scan is set aside." in body and 'aria-invalid="true"' in body
    db.session.refresh(scan)
    assert scan.inbox is InboxState.PENDING and not audit("scan.dismissed")

    assert client.post(f"/scans/{scan.id}/dismiss", {"reason": "Test scan of the demo head"},
                       htmx=f"scan-{scan.id}").status_code == 200
    db.session.refresh(scan)
    assert scan.inbox is InboxState.DISMISSED
    assert json.loads(audit("scan.dismissed", scan.id)[0].after) == {"reason": "Test scan of the demo head"}
    dismissed = client.get("/scans/?tab=dismissed").get_data(as_text=True)
    assert f'id="scan-{scan.id}"' in dismissed and "Test scan of the demo head" in dismissed

    restored = client.post(f"/scans/{scan.id}/restore", htmx=f"scan-{scan.id}")
    assert restored.status_code == 200 and "Restored." in restored.get_data(as_text=True)
    db.session.refresh(scan)
    assert scan.inbox is InboxState.PENDING and audit("scan.restored", scan.id)
    again = client.post(f"/scans/{scan.id}/restore", htmx=f"scan-{scan.id}")
    assert again.status_code == 422 and "This scan is not dismissed." in again.get_data(as_text=True)


def test_a_manager_reads_the_inbox_and_can_not_act(client, login, world, scanner):
    scan = unknown(world, scanner)
    patient = factories.patient(world.practice)
    db.session.commit()
    login("manager")
    page = client.get("/scans/").get_data(as_text=True)
    assert f'id="scan-{scan.id}"' in page and "Match patient" not in page and "can read the inbox" in page
    assert "Your role can read this scan" in client.get(f"/scans/{scan.id}").get_data(as_text=True)
    for url, data in ((f"/scans/{scan.id}/patient", {"patient_id": patient.id}), (f"/scans/{scan.id}/new-case", {}),
                      (f"/scans/{scan.id}/dismiss", {"reason": "x"}), (f"/scans/{scan.id}/restore", {})):
        assert client.post(url, data).status_code == 403, url
    assert client.get(f"/scans/{scan.id}/patients?q=a").status_code == 403
    db.session.refresh(scan)
    assert scan.patient_id is None and scan.inbox is InboxState.PENDING


def test_another_practices_scan_is_not_found(client, login, world):
    theirs = factories.integration(world.other_practice, Vendor.ITERO)
    db.session.commit()
    scan = ingest(world, theirs, vendor_order(PatientRef("Zed", "Other", "Z-1")), practice=world.other_practice)
    patient = factories.patient(world.practice)
    db.session.commit()
    login()
    assert f'id="scan-{scan.id}"' not in client.get("/scans/").get_data(as_text=True)
    assert client.get(f"/scans/{scan.id}").status_code == 404
    assert client.get(f"/scans/{scan.id}/patients").status_code == 404
    for url, data in ((f"/scans/{scan.id}/patient", {"patient_id": patient.id}), (f"/scans/{scan.id}/new-case", {}),
                      (f"/scans/{scan.id}/dismiss", {"reason": "x"}), (f"/scans/{scan.id}/case", {"case_id": 1})):
        assert client.post(url, data).status_code == 404, url
    db.session.refresh(scan)
    assert scan.patient_id is None and scan.inbox is InboxState.PENDING


def test_inbox_actions_without_a_csrf_token_are_refused(client, login, world, scanner):
    scan = unknown(world, scanner)
    patient = factories.patient(world.practice)
    db.session.commit()
    login()
    before = rows()
    assert client.post(f"/scans/{scan.id}/patient", {"patient_id": patient.id}, csrf=False).status_code == 400
    assert client.post(f"/scans/{scan.id}/dismiss", {"reason": "x"}, csrf=False).status_code == 400
    db.session.refresh(scan)
    assert scan.patient_id is None and scan.inbox is InboxState.PENDING and rows() == before


def test_what_the_scanner_says_renders_as_text(client, login, world, scanner):
    scan = ingest(world, scanner, vendor_order(PatientRef('<script>alert(1)</script>', '" onmouseover="x', "C-<b>")))
    login()
    for html in (client.get("/scans/").get_data(as_text=True), client.get(f"/scans/{scan.id}").get_data(as_text=True)):
        assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert '" onmouseover="x' not in html and "C-<b>" not in html


def test_the_scan_page_shows_files_earlier_files_bites_history_and_audit(client, login, world, scanner):
    patient = factories.patient(world.practice, "Ana", "Silva")
    db.session.commit()
    scan = ingest(world, scanner, vendor_order(ref_of(patient)))
    rescan = (Asset("b-upper", "upper-2.stl", "STL", jaw=Jaw.UPPER, jaw_source="vendor"),
              Asset("b-lower", "lower-2.ply", "PLY", jaw=Jaw.LOWER, error="The file is not a mesh: it ends early."),
              Asset("a-bite", "bite.stl", "STL", jaw=Jaw.BITE, jaw_source="geometry"))
    ingest(world, scanner, vendor_order(ref_of(patient), at=T0 + dt.timedelta(hours=2), assets=rescan))
    login()

    page = client.get(f"/scans/{scan.id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<html" in html
    current = html.split("Earlier files", 1)[0]
    assert "upper-2.stl" in current and "lower-2.ply" in current and "The file is not a mesh: it ends early." in current
    assert 'class="chip jaw-lower refused"' in current
    assert "bite of upper-2.stl and no lower arch" in current  # the refused lower is no arch to link
    earlier = html.split("Earlier files", 1)[1].split("</table>", 1)[0]
    assert "<s>upper.stl</s>" in earlier and "<s>lower.stl</s>" in earlier and "bite.stl" not in earlier
    assert "80,000" in earlier and "2.3 MB" in earlier and "a-upper" in earlier
    assert "from the shape" in html and "Scanning" in html  # how the jaw was known; the vendor's history
    audit_panel = html.split("<h2>Audit</h2>", 1)[1]
    assert "received" in audit_panel and "updated" in audit_panel and "matched" in audit_panel
    assert f'href="/cases/{scan.case_id}"' in html

    fragment = client.hx(f"/scans/{scan.id}", target="scan-main").get_data(as_text=True)
    assert "<html" not in fragment and fragment.lstrip().startswith('<div id="scan-main"')


def test_a_person_sets_the_jaw_on_the_scan_page_and_it_is_audited_and_kept(client, login, world, scanner):
    note = "not sure: one arch lies above the other along +z but both are as wide; set the jaw by hand"
    assets = (Asset("a-1", "scan-1.stl", "STL", jaw=Jaw.UNKNOWN, jaw_note=note),
              Asset("a-2", "scan-2.stl", "STL", jaw=Jaw.UNKNOWN, jaw_note=note),
              Asset("a-3", "scan-3.stl", "STL", jaw=Jaw.BITE, jaw_source="geometry",
                    jaw_note="sure: 40% as wide as the narrower arch, a bite scan's few teeth"))
    scan = unknown(world, scanner, assets=assets)
    login()
    html = client.get(f"/scans/{scan.id}").get_data(as_text=True)
    assert html.count('class="jaw-form"') == 3 and note in html and "sure: 40% as wide" in html
    assert 'class="small jaw-unsure"' in html  # the unsure note stands out
    first, second, bite = scan.current_files
    before = rows()

    done = client.post(f"/scans/{scan.id}/jaw", {"file_id": first.id, "jaw": "upper"})
    assert done.status_code == 303
    client.post(f"/scans/{scan.id}/jaw", {"file_id": second.id, "jaw": "lower"})
    db.session.refresh(first)
    db.session.refresh(bite)
    assert (first.jaw, first.jaw_source) == (Jaw.UPPER, "person") and first.jaw_note.startswith("set by ")
    assert (bite.upper_file_id, bite.lower_file_id) == (first.id, second.id)  # the bite relinked
    events = audit("scan.jaw_set", scan.id)
    assert rows() == before + 2 and len(events) == 2
    assert json.loads(events[0].before)["jaw"] == "unknown" and json.loads(events[0].after) == {
        "file_id": first.id, "file": "scan-1.stl", "jaw": "upper", "jaw_source": "person"}
    page = client.get(f"/scans/{scan.id}").get_data(as_text=True)
    assert "set by hand" in page and "scan-1.stl is set to upper." in page

    # A later report of the vendor does not take the person's jaw away.
    ingest(world, scanner, vendor_order(PatientRef("Nora", "Nobody", "X-999", dt.date(1970, 1, 1)),
                                        at=T0 + dt.timedelta(hours=1), assets=assets))
    db.session.refresh(first)
    assert (first.jaw, first.jaw_source) == (Jaw.UPPER, "person")
    before = rows()

    # Refusals: another file, the same jaw again, a jaw that is none; nothing changes, no audit row.
    for form, message in [({"file_id": 999999, "jaw": "upper"}, "Choose one of the scan's current mesh files."),
                          ({"file_id": first.id, "jaw": "upper"}, "scan-1.stl is already set to upper."),
                          ({"file_id": first.id, "jaw": "left"}, "Not a valid choice")]:
        refused = client.post(f"/scans/{scan.id}/jaw", form)
        assert refused.status_code == 422 and message in html_module.unescape(refused.get_data(as_text=True))
    assert rows() == before


def test_a_manager_can_not_set_a_jaw(client, login, world, scanner):
    scan = unknown(world, scanner)
    login("manager")
    assert 'class="jaw-form"' not in client.get(f"/scans/{scan.id}").get_data(as_text=True)
    assert client.post(f"/scans/{scan.id}/jaw", {"file_id": scan.current_files[0].id, "jaw": "lower"}).status_code == 403
    db.session.refresh(scan.current_files[0])
    assert scan.current_files[0].jaw is Jaw.UPPER


def test_the_case_page_lists_its_scans_and_the_board_card_shows_the_scanner(client, login, world, scanner):
    patient = factories.patient(world.practice)
    db.session.commit()
    scan = ingest(world, scanner, vendor_order(ref_of(patient), order_id="ORD-55"))
    login("manager")
    html = client.get(f"/cases/{scan.case_id}").get_data(as_text=True)
    panel = html.split('id="scans"', 1)[1].split("</section>", 1)[0]
    assert "iTero" in panel and "ORD-55" in panel and "Completed" in panel
    assert 'class="chip jaw-upper"' in panel and f'href="/scans/{scan.id}"' in panel
    board = client.get("/").get_data(as_text=True)
    card = board.split(f'data-case-number="{scan.case.number}"', 1)[1].split("</li>", 1)[0]
    assert '<span class="badge src" title="From the scanner">iTero</span>' in card
    manual = factories.case(world)
    assert 'id="scans"' not in client.get(f"/cases/{manual.id}").get_data(as_text=True)


# ==== Settings → Integrations ==========================================================================

@pytest.fixture()
def offered(monkeypatch):
    """Offer the three vendors as if their adapters were installed (they come from other branches);
    only the choice list is affected, no vendor is called."""
    vendors = [Vendor.ITERO, Vendor.MEDIT, Vendor.THREESHAPE]
    monkeypatch.setattr(admin, "offered_vendors", lambda: vendors)
    return vendors


def itero_form(world, **over) -> dict:
    data = {"name": "Surgery 2 iTero", "client_id": CLIENT_ID, "client_secret": SECRET,
            "base_url": "https://api.itero.com", "oauth_base": "https://auth.itero.com/oauth",
            "lab_ids": [world.labs["email"].id, world.labs["api"].id]}
    data.update(over)
    return data


def test_scanner_settings_are_for_admins_only(client, login, world, scanner):
    for role in ("coordinator", "manager"):
        login(role)
        assert client.get("/admin/scanners/").status_code == 403
        assert client.post(f"/admin/scanners/{scanner.id}/active", {"active": "0"}).status_code == 403
        assert client.get(f"/admin/scanners/{scanner.id}").status_code == 403
        assert 'href="/admin/scanners/"' not in client.get("/").get_data(as_text=True)
    login("admin")
    page = client.get("/admin/scanners/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "<html" in html and 'aria-current="page">Integrations</a>' in html
    assert f'id="integration-{scanner.id}"' in html and "Front desk" in html and "Email Lab" in html
    fragment = client.hx("/admin/scanners/", target="integrations").get_data(as_text=True)
    assert fragment.lstrip().startswith('<div id="integrations"') and "<html" not in fragment


def test_only_vendors_with_an_adapter_can_be_added(client, login, world):
    login("admin")
    html = client.get("/admin/scanners/").get_data(as_text=True)
    offered = admin.offered_vendors()
    assert offered == [v for v in registry.supported() if v in admin.SETTINGS]
    for vendor in (Vendor.ITERO, Vendor.MEDIT, Vendor.THREESHAPE):
        link = f"/admin/scanners/new?vendor={vendor.value}"
        assert (link in html) == (vendor in offered)
        assert client.get(link).status_code == (200 if vendor in offered else 404)
    assert client.get("/admin/scanners/new?vendor=upload").status_code == 404
    assert client.get("/admin/scanners/new?vendor=nonsense").status_code == 404
    if not offered:
        assert "no scanner adapter installed" in html


def test_adding_an_integration_seals_the_credentials_and_never_shows_them(client, login, world, offered):
    login("admin")
    form = client.get("/admin/scanners/new?vendor=itero").get_data(as_text=True)
    active_labs = [lab for lab in world.labs.values() if lab.active]
    for lab in active_labs:  # every active lab of the group is checked at first
        assert re.search(rf'name="lab_ids" value="{lab.id}" checked', form)

    response = client.post("/admin/scanners/new?vendor=itero", itero_form(world))
    assert response.status_code == 303
    integration = db.session.scalar(select(ScannerIntegration).where(ScannerIntegration.name == "Surgery 2 iTero"))
    assert integration.vendor is Vendor.ITERO and integration.active
    assert sorted(lab.id for lab in integration.labs) == sorted([world.labs["email"].id, world.labs["api"].id])
    stored = db.session.execute(text("SELECT credentials, settings FROM scanner_integration WHERE id = :id"),
                                {"id": integration.id}).one()
    assert stored.credentials.startswith("gAAAA")
    assert SECRET not in stored.credentials and CLIENT_ID not in stored.credentials
    assert crypto.unseal(stored.credentials) == {"client_id": CLIENT_ID, "client_secret": SECRET}
    assert json.loads(stored.settings) == {"base_url": "https://api.itero.com",
                                           "oauth_base": "https://auth.itero.com/oauth"}

    created = audit("scanner.created", integration.id)
    assert len(created) == 1 and created[0].entity_type == "scanner_integration"
    assert SECRET not in created[0].after and CLIENT_ID not in created[0].after
    assert json.loads(created[0].after)["credentials_set"] == ["client_id", "client_secret"]

    for url in ("/admin/scanners/", f"/admin/scanners/{integration.id}", f"/admin/scanners/{integration.id}/edit"):
        html = client.get(url).get_data(as_text=True)
        assert SECRET not in html and CLIENT_ID not in html, url
    show = client.get(f"/admin/scanners/{integration.id}").get_data(as_text=True)
    assert show.count('<span class="badge ok">set</span>') == 2 and "https://api.itero.com" in show
    edit = client.get(f"/admin/scanners/{integration.id}/edit").get_data(as_text=True)
    assert "Currently stored: leave blank to keep it." in edit


def test_at_least_one_lab_is_required_and_nothing_is_saved_without(client, login, world, offered):
    login("admin")
    before = rows()
    response = client.post("/admin/scanners/new?vendor=itero", itero_form(world, lab_ids=[]), htmx=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and html.lstrip().startswith('<form id="integration-form"')
    assert re.search(r'<p class="error" id="lab_ids-error" role="alert">Choose at least one lab this scanner may '
                     r'send to\.</p>', html)
    assert SECRET not in html  # a password field is never filled back in
    bad = client.post("/admin/scanners/new?vendor=itero", itero_form(world, lab_ids=["x"]))
    assert bad.status_code == 422 and "Choose labs from the list." in bad.get_data(as_text=True)
    assert db.session.scalar(select(func.count(ScannerIntegration.id))) == 0 and rows() == before


@pytest.mark.parametrize("field, value, message", [
    ("client_id", "", "Enter the client id."),
    ("base_url", "ftp://api.itero.com", "Give a full address starting with https://."),
    ("base_url", "https://evil.test/api", "evil.test is not on the allowed vendor hosts"),
    ("name", "   ", "Give the integration a name people here will recognise."),
])
def test_bad_itero_settings_are_refused_beside_the_field(client, login, world, offered, field, value, message):
    login("admin")
    response = client.post("/admin/scanners/new?vendor=itero", itero_form(world, **{field: value}))
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and message in html
    assert re.search(rf'id="{field}-error">[^<]*{re.escape(message)}', html)
    assert db.session.scalar(select(func.count(ScannerIntegration.id))) == 0


def test_medit_needs_32_character_client_credentials_and_offers_its_hosts(client, login, world, offered):
    login("admin")
    form = client.get("/admin/scanners/new?vendor=medit").get_data(as_text=True)
    assert 'value="https://openapi-auth.meditlink.com"' in form and 'name="webhook_secret"' in form
    data = {"name": "Medit", "client_id": "short", "client_secret": "b" * 32,
            "auth_host": "https://openapi-auth.meditlink.com",
            "resource_host": "https://openapi-resources.meditlink.com", "lab_ids": [world.labs["email"].id]}
    refused = client.post("/admin/scanners/new?vendor=medit", data)
    assert refused.status_code == 422 and "Client id is 32 characters; this is 5." in refused.get_data(as_text=True)
    data["client_id"] = "a" * 32
    assert client.post("/admin/scanners/new?vendor=medit", data).status_code == 303
    integration = db.session.scalar(select(ScannerIntegration).where(ScannerIntegration.vendor == Vendor.MEDIT))
    assert crypto.unseal(integration.credentials) == {"client_id": "a" * 32, "client_secret": "b" * 32}
    assert integration.config["resource_host"] == "https://openapi-resources.meditlink.com"


def test_3shape_takes_a_folder_that_exists(client, login, world, offered, tmp_path):
    login("admin")
    data = {"name": "TRIOS export", "folder": "relative/path", "lab_ids": [world.labs["manual"].id]}
    assert "Give an absolute path" in client.post("/admin/scanners/new?vendor=3shape", data).get_data(as_text=True)
    data["folder"] = str(tmp_path / "missing")
    assert "no such folder" in client.post("/admin/scanners/new?vendor=3shape", data).get_data(as_text=True)
    data["folder"] = str(tmp_path)
    assert client.post("/admin/scanners/new?vendor=3shape", data).status_code == 303
    integration = db.session.scalar(select(ScannerIntegration).where(ScannerIntegration.vendor == Vendor.THREESHAPE))
    assert integration.config == {"folder": str(tmp_path)} and integration.credentials == ""


def test_an_edit_with_a_blank_secret_keeps_it_and_the_audit_names_what_changed(client, login, world, offered):
    login("admin")
    client.post("/admin/scanners/new?vendor=itero", itero_form(world))
    integration = db.session.scalar(select(ScannerIntegration))
    url = f"/admin/scanners/{integration.id}/edit"

    kept = client.post(url, itero_form(world, client_id="", client_secret="", name="Surgery 3 iTero",
                                       lab_ids=[world.labs["email"].id]))
    assert kept.status_code == 303
    db.session.refresh(integration)
    assert integration.name == "Surgery 3 iTero" and [lab.name for lab in integration.labs] == ["Email Lab"]
    assert crypto.unseal(integration.credentials) == {"client_id": CLIENT_ID, "client_secret": SECRET}
    row = audit("scanner.updated", integration.id)[-1]
    assert json.loads(row.after)["changed"] == ["name", "labs"]

    rotated = "a-new-secret-just-as-secret"
    assert client.post(url, itero_form(world, client_id="", client_secret=rotated, name="Surgery 3 iTero",
                                       lab_ids=[world.labs["email"].id])).status_code == 303
    db.session.refresh(integration)
    assert crypto.unseal(integration.credentials)["client_secret"] == rotated
    row = audit("scanner.updated", integration.id)[-1]
    assert json.loads(row.after)["changed"] == ["credentials.client_secret"]
    assert rotated not in row.after and rotated not in row.before and SECRET not in row.before

    count = rows()
    same = client.post(url, itero_form(world, client_id="", client_secret="", name="Surgery 3 iTero",
                                       lab_ids=[world.labs["email"].id]))
    assert same.status_code == 303 and rows() == count  # nothing changed, nothing audited


def test_unreadable_credentials_must_be_entered_again(client, login, world, offered, app, monkeypatch):
    integration = factories.integration(world.practice, Vendor.ITERO, labs=[world.labs["email"]],
                                        base_url="https://api.itero.com", oauth_base="https://auth.itero.com")
    monkeypatch.setitem(app.config, "SCANNER_CREDENTIALS_KEYS", crypto.new_key())
    integration.credentials = crypto.seal({"client_id": "a", "client_secret": "b"})
    db.session.commit()
    monkeypatch.setitem(app.config, "SCANNER_CREDENTIALS_KEYS", crypto.new_key())
    login("admin")
    page = client.get(f"/admin/scanners/{integration.id}").get_data(as_text=True)
    assert page.count("can't be read with the configured keys: enter it again") == 2
    blank = client.post(f"/admin/scanners/{integration.id}/edit",
                        itero_form(world, client_id="", client_secret="", lab_ids=[world.labs["email"].id]))
    assert blank.status_code == 422 and "Enter the client id." in blank.get_data(as_text=True)


def test_pause_and_resume_from_the_table_and_the_page(client, login, world, scanner):
    login("admin")
    row = client.post(f"/admin/scanners/{scanner.id}/active", {"active": "0"}, htmx=f"integration-{scanner.id}")
    html = row.get_data(as_text=True)
    assert row.status_code == 200 and html.lstrip().startswith(f'<tbody id="integration-{scanner.id}"')
    assert ">Paused<" in html and ">Resume<" in html
    db.session.refresh(scanner)
    assert not scanner.active and json.loads(audit("scanner.paused", scanner.id)[0].after) == {"active": False}

    plain = client.post(f"/admin/scanners/{scanner.id}/active", {"active": "1"})
    assert plain.status_code == 303 and plain.headers["Location"].endswith(f"/admin/scanners/{scanner.id}")
    db.session.refresh(scanner)
    assert scanner.active and audit("scanner.resumed", scanner.id)
    count = rows()
    client.post(f"/admin/scanners/{scanner.id}/active", {"active": "1"})
    assert rows() == count


def test_a_new_notification_url_is_shown_once_and_never_audited(client, login, world, scanner):
    login("admin")
    response = client.post(f"/admin/scanners/{scanner.id}/callback-url")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    url = re.search(r'id="new-url" class="secret-value" value="([^"]+)"', html).group(1)
    assert url.startswith("http://localhost/api/scanners/hooks/") and "webhook" in html
    db.session.refresh(scanner)
    token = url.rsplit("/", 1)[1]
    from portal.tokens import hash_token

    assert scanner.callback_key_hash == hash_token(token)
    row = audit("scanner.callback_url_renewed", scanner.id)[0]
    assert token not in row.after and token not in row.before
    assert url not in client.get(f"/admin/scanners/{scanner.id}").get_data(as_text=True)


def test_a_paused_integration_is_not_synced(client, login, world, scanner):
    scanner.active = False
    db.session.commit()
    login("admin")
    response = client.post(f"/admin/scanners/{scanner.id}/sync")
    assert response.status_code == 409 and "paused; resume it first" in response.get_data(as_text=True)
    assert not audit("scanner.sync_requested")


def test_the_sign_in_callback_needs_the_state_this_session_started(client, login, world, scanner):
    login("admin")
    before = rows()
    for query in ("", "?code=abc", "?code=abc&state=forged"):
        response = client.get(f"/admin/scanners/oauth/callback{query}")
        assert response.status_code == 400 and "was not started here" in response.get_data(as_text=True)
    with client.raw.session_transaction() as s:
        s["scanner_oauth"] = {"state": "expected", "integration_id": scanner.id, "practice_id": world.practice.id}
    denied = client.get("/admin/scanners/oauth/callback?state=expected&error=access_denied")
    assert denied.status_code == 409 and "did not sign in: access_denied" in denied.get_data(as_text=True)
    again = client.get("/admin/scanners/oauth/callback?state=expected&code=abc")  # a refused sign-in ends it
    assert again.status_code == 400
    with client.raw.session_transaction() as s:
        s["scanner_oauth"] = {"state": "expected", "integration_id": scanner.id, "practice_id": world.practice.id}
    back = client.get("/admin/scanners/oauth/callback?state=expected&code=abc")  # GET stores nothing (docs/reliability.md F1)
    assert back.status_code == 200 and 'name="code" type="hidden" value="abc"' in back.get_data(as_text=True)
    forged = client.post("/admin/scanners/oauth/callback", {"code": "abc", "state": "forged"})
    assert forged.status_code == 400 and "was not started here" in forged.get_data(as_text=True)
    replay = client.post("/admin/scanners/oauth/callback", {"code": "abc", "state": "expected"})
    assert replay.status_code == 400  # the forged POST used up the state: it works once
    with client.raw.session_transaction() as s:
        s["scanner_oauth"] = {"state": "expected", "integration_id": scanner.id, "practice_id": world.other_practice.id}
    assert client.get("/admin/scanners/oauth/callback?state=expected&code=abc").status_code == 404
    assert client.post("/admin/scanners/oauth/callback", {"code": "abc", "state": "expected"}).status_code == 404
    assert rows() == before


def test_pairing_needs_an_open_pairing_and_an_offered_account(client, login, world, scanner):
    login("admin")
    closed = client.post(f"/admin/scanners/{scanner.id}/pair", {"account_id": "acc-1"})
    assert closed.status_code == 409 and "no longer open" in closed.get_data(as_text=True)
    with client.raw.session_transaction() as s:
        s["scanner_pairing"] = {"integration_id": scanner.id, "accounts": [["acc-1", "Main Street Dental"]]}
    unknown_account = client.post(f"/admin/scanners/{scanner.id}/pair", {"account_id": "acc-2"})
    assert unknown_account.status_code == 422
    assert "Choose one of the accounts listed." in unknown_account.get_data(as_text=True)
    missing = client.post(f"/admin/scanners/{scanner.id}/pair", {})
    assert missing.status_code == 422 and "Choose the account to pair to." in missing.get_data(as_text=True)
    assert not audit("scanner.connected")


def test_another_practices_integration_is_not_found(client, login, world):
    theirs = factories.integration(world.other_practice, Vendor.ITERO)
    db.session.commit()
    login("admin")
    assert f'id="integration-{theirs.id}"' not in client.get("/admin/scanners/").get_data(as_text=True)
    for url in (f"/admin/scanners/{theirs.id}", f"/admin/scanners/{theirs.id}/edit"):
        assert client.get(url).status_code == 404, url
    for action in ("active", "test", "sync", "disconnect", "callback-url", "connect", "pair", "edit"):
        assert client.post(f"/admin/scanners/{theirs.id}/{action}", {"active": "0"}).status_code == 404, action
    db.session.refresh(theirs)
    assert theirs.active and theirs.callback_key_hash is None


def test_settings_changes_without_a_csrf_token_are_refused(client, login, world, scanner, offered):
    login("admin")
    before = rows()
    assert client.post(f"/admin/scanners/{scanner.id}/active", {"active": "0"}, csrf=False).status_code == 400
    assert client.post(f"/admin/scanners/{scanner.id}/callback-url", csrf=False).status_code == 400
    assert client.post("/admin/scanners/new?vendor=itero", itero_form(world), csrf=False).status_code == 400
    db.session.refresh(scanner)
    assert scanner.active and scanner.callback_key_hash is None and rows() == before
    assert db.session.scalar(select(func.count(ScannerIntegration.id))) == 1
