"""iTero read strictly (issue 10): a vendor written only from docs/vendors/itero.md and docs/sources.md source 001, which
the sandbox plays with `strict=True` over real HTTP: discovery wants the Bearer like every call
after the token, orders pages count from 0, and Get Orders lists only the orders in Completed /
Ready for Download or Lab Review. Also: Test connection meeting a discovery off the allowed hosts
stops the integration as a sync does, the refresh margin is a share of the token's life, and the
sign-in's tokens are revoked once pairing hands out new ones."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.cases import lifecycle
from portal.cases.lifecycle import Status
from portal.cases.models import LabCase
from portal.cases.services import timeline
from portal.extensions import db
from portal.integrations import oauth
from portal.integrations.services import new_callback_url
from portal.integrations.models import ScannerIntegration
from portal.integrations.registry import adapter_for
from portal.integrations.vendor import OrderStage
from portal.practices.models import utcnow
from portal.scans.models import Scan
from tests import factories
from tests.integrations.itero_support import ACCOUNT, connect, new_integration, patient_body, sign_in, sync_now


@pytest.fixture()
def strict(sandbox):
    sandbox.configure(strict=True)
    return sandbox


def scans() -> list[Scan]:
    db.session.expire_all()
    return list(db.session.scalars(select(Scan).order_by(Scan.id)))


def reported(case) -> list[str]:
    rows = [r for r in timeline(case) if r.action in ("scan.received", "scan.updated")]
    return [json.loads(r.after)["status"] for r in reversed(rows)]


def test_discovery_carries_the_bearer_so_a_strict_vendor_lets_us_pair(world, strict, live):
    integration = new_integration(world, strict)

    connect(integration)

    assert db.session.get(ScannerIntegration, integration.id).connected
    found = strict.requests("itero.discovery")
    assert found and all((r["auth_scheme"], r["status"]) == ("Bearer", 200) for r in found)
    assert adapter_for(integration).test_connection().endswith("2 doctors, 1 scanner")
    assert strict.requests("itero.discovery")[-1]["status"] == 200


def test_the_sign_ins_tokens_are_revoked_once_pairing_hands_out_new_ones(world, sandbox, live):
    integration = new_integration(world, sandbox)
    sign_in(integration)
    signed_in = oauth.read(integration.id)
    adapter_for(integration).accounts()
    db.session.commit()
    assert signed_in.access_token in sandbox.core.access

    adapter_for(integration).pair(ACCOUNT, new_callback_url(integration))
    db.session.commit()

    paired = oauth.read(integration.id)
    assert paired.access_token != signed_in.access_token
    assert signed_in.access_token not in sandbox.core.access and signed_in.refresh_token not in sandbox.core.refresh
    revoked = [r["body"]["token"] for r in sandbox.requests("itero.revoke")]
    assert revoked == [signed_in.refresh_token, signed_in.access_token]
    assert paired.access_token in sandbox.core.access  # the pairing's tokens work
    assert sync_now(integration) == {}


@pytest.mark.parametrize("count_from", [0, 1])
def test_no_order_is_skipped_whichever_way_the_vendor_counts_its_pages(world, sandbox, live, count_from):
    integration = new_integration(world, sandbox)
    connect(integration)
    sandbox.configure(page_size=2, strict=count_from == 0)  # strict: the first page is page 0
    patients = [factories.patient(world.practice) for _ in range(5)]
    db.session.commit()
    orders = [sandbox.add_itero_order(patient=patient_body(p)) for p in patients]

    assert sync_now(integration) == {"new": 5}

    assert sorted(s.order_id for s in scans()) == sorted(o["order_id"] for o in orders)
    pages = [(r["query"]["page"], r["status"]) for r in sandbox.requests("itero.orders")]
    assert pages == ([("0", 200), ("1", 200), ("2", 200)] if count_from == 0
                     else [("0", 400), ("1", 200), ("2", 200), ("3", 200)])


@pytest.mark.parametrize("steps", [
    ["modeling", "lab_review", "milling", "ready_to_ship", "downloaded"],
    ["modeling", "lab_review", "modeling", "lab_review", "milling", "ready_to_ship", "downloaded"],
], ids=["milling", "interpretation2"])
def test_flows_4_and_5_reach_the_timeline_from_a_vendor_that_lists_only_ready_and_lab_review(
        world, strict, live, steps):
    factories.provider(world.practice, "Dr. Maya Chen")
    integration = new_integration(world, strict)
    connect(integration)
    strict.configure(callbacks=False)  # the polls alone: a strict vendor notifies only Ready and Lab Review
    patient = factories.patient(world.practice, "Ana", "Silva")
    db.session.commit()
    order = strict.add_itero_order(patient=patient_body(patient))
    sync_now(integration)
    case = db.session.scalar(select(LabCase).where(LabCase.patient_id == patient.id))
    lifecycle.move(case, Status.SENT, actor=Actor.user(world.users["coordinator"]))
    db.session.commit()

    for step in steps:
        strict.move_itero_order(order["order_id"], step)
        sync_now(integration)

    [scan] = scans()
    case = db.session.get(LabCase, case.id)
    names = {"modeling": "iTero Modeling", "lab_review": "Lab Review", "milling": "iTero Milling",
             "ready_to_ship": "Ready to Ship", "downloaded": "Downloaded"}
    assert reported(case) == ["Completed"] + [names[s] for s in steps]
    assert scan.stage is OrderStage.DOWNLOADED and case.status is Status.SENT
    # Downloaded is final: it is not read again.
    read = strict.counters.get("itero.order_by_rx", 0)
    sync_now(integration)
    assert strict.counters.get("itero.order_by_rx", 0) == read


def test_an_order_not_listed_again_is_read_by_its_rx_until_its_case_is_closed(world, strict, live):
    integration = new_integration(world, strict)
    connect(integration)
    first, second = factories.patient(world.practice), factories.patient(world.practice)
    db.session.commit()
    strict.add_itero_order(patient=patient_body(first))
    sync_now(integration)
    strict.add_itero_order(patient=patient_body(second))
    sync_now(integration)  # lists both (updated_since is inclusive): nothing to read again
    assert strict.counters.get("itero.order_by_rx", 0) == 0

    sync_now(integration)  # lists the second only: the first (Completed, it may still change) is read by its Rx

    assert strict.counters.get("itero.order_by_rx", 0) == 1
    scan = next(s for s in scans() if s.patient_id == first.id)
    lifecycle.move(scan.case, Status.CANCELLED, actor=Actor.user(world.users["coordinator"]), reason="test")
    db.session.commit()
    sync_now(integration)
    assert strict.counters.get("itero.order_by_rx", 0) == 1  # a closed case's scan is left alone


def test_test_connection_meeting_a_foreign_discovery_stops_the_integration_as_a_sync_does(
        client, login, world, sandbox, live):
    integration = new_integration(world, sandbox)
    connect(integration)
    sandbox.configure(foreign_host="127.0.0.2:9", foreign_endpoints=["practice_configuration"])
    login("admin")
    asked = len(sandbox.requests("itero.practice_configuration"))

    page = client.post(f"/admin/scanners/{integration.id}/test").get_data(as_text=True)

    db.session.expire_all()
    integration = db.session.get(ScannerIntegration, integration.id)
    assert not integration.active and integration.status_label == "Paused"
    assert integration.last_error.startswith("Stopped: iTero's discovery puts the practice_configuration endpoint")
    assert "Stopped: iTero" in page
    actions = list(db.session.scalars(select(AuditEvent.action).where(
        AuditEvent.entity_type == "scanner_integration", AuditEvent.entity_id == str(integration.id))
        .order_by(AuditEvent.seq)))
    assert actions[-2:] == ["scanner.sync_failed", "scanner.stopped"]
    assert len(sandbox.requests("itero.practice_configuration")) == asked  # nothing went anywhere


def test_a_short_lived_token_is_not_refreshed_on_every_call(world, sandbox, live):
    sandbox.configure(token_ttl=30)  # a vendor whose tokens live half a minute
    integration = new_integration(world, sandbox)
    connect(integration)

    for _ in range(3):
        assert "error" not in sync_now(integration)

    assert sandbox.counters.get("itero.refresh", 0) == 0
    # With a tenth of its life left, it is refreshed before it runs out.
    integration = db.session.get(ScannerIntegration, integration.id)
    integration.token_expires_at = utcnow() + dt.timedelta(seconds=2)
    db.session.commit()
    sync_now(integration)
    assert sandbox.counters["itero.refresh"] == 1
    assert oauth.read(integration.id).margin == dt.timedelta(seconds=3)
