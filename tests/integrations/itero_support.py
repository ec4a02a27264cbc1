"""Helpers of the iTero tests: an integration signed in and paired over HTTP the way the admin pages
do it, running queued jobs, waiting for the sandbox's callbacks. The fixtures (the sandbox, the
app behind a real HTTP server, a clean queue) are in tests/scans/conftest.py."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
from rq.job import Job

from portal import keyring as crypto
from portal.extensions import db as _db
from portal.integrations import sync
from portal.integrations.models import ScannerIntegration, VendorEvent
from portal.integrations.registry import adapter_for
from portal.integrations.services import new_callback_url
from portal.integrations.vendor import Vendor

CLIENT_ID, CLIENT_SECRET = "lab-manager-test", "itero-test-secret-0001"
REDIRECT = "http://127.0.0.1:5000/settings/scanners/oauth/callback"  # loopback: plain http is allowed
ACCOUNT, ACCOUNT_NAME = "8001234", "Bright Smile Dental (us)"


def run_jobs(queue) -> list:
    """Run the queued jobs in this process, in order, as one worker would; their results."""
    results = []
    while queue.count:
        job = Job.fetch(queue.pop_job_id(), connection=queue.connection)
        results.append((job.func_name, job.perform()))
        job.delete()
    _db.session.expire_all()
    return results


def new_integration(world, sandbox, *, labs=None, name="Front desk") -> ScannerIntegration:
    integration = ScannerIntegration(practice_id=world.practice.id, vendor=Vendor.ITERO, name=name,
                                     credentials=crypto.seal({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}))
    integration.set_config(base_url=sandbox.itero_url, oauth_base=sandbox.itero_oauth)
    integration.labs = list(labs if labs is not None else [world.labs["email"]])
    _db.session.add(integration)
    _db.session.commit()
    return integration


def sign_in(integration: ScannerIntegration) -> None:
    """The login page over HTTP (the sandbox approves at once) and the code exchanged for tokens."""
    url = adapter_for(integration).authorize_url("state-123", REDIRECT)
    answer = httpx.get(url, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT
    query = parse_qs(back.query)
    assert query["state"] == ["state-123"]
    adapter_for(integration).finish_authorization(query["code"][0], REDIRECT)
    _db.session.commit()


def connect(integration: ScannerIntegration, account: str = ACCOUNT) -> str:
    """Sign in, list the accounts, pair to one with a fresh callback URL; returns that URL."""
    sign_in(integration)
    offered = adapter_for(integration).accounts()
    _db.session.commit()
    assert account in dict(offered)
    callback = new_callback_url(integration)
    adapter_for(integration).pair(account, callback)
    _db.session.commit()
    return callback


def sync_now(integration: ScannerIntegration) -> dict:
    result = sync.run_sync(integration.id, source="test")
    _db.session.expire_all()
    return result


def events(integration: ScannerIntegration) -> list[VendorEvent]:
    _db.session.expire_all()
    return list(_db.session.scalars(_db.select(VendorEvent).where(VendorEvent.integration_id == integration.id)
                                    .order_by(VendorEvent.id)))


def patient_body(patient) -> dict:
    return {"first_name": patient.first_name, "last_name": patient.last_name, "chart_number": patient.chart_number,
            "date_of_birth": patient.date_of_birth.isoformat() if patient.date_of_birth else None}


def delivered(sandbox, count: int | None = None) -> list[dict]:
    """Wait for the sandbox's callbacks to be posted; what it sent and how we answered."""
    assert sandbox.drain(10), "the sandbox's callbacks were not delivered in time"
    sent = sandbox.deliveries()
    if count is not None:
        assert len(sent) == count, sent
    return sent
