"""The Open Dental sandbox itself, over real HTTP: a DateTStamp read is found through the sandbox's
(DateTStamp, primary key) index and stays in primary key order across writes; a deleted appointment
is gone from every later read and listed in the appointment history as Deleted."""
from __future__ import annotations

import httpx

from sandbox.opendental import DEMO_CUSTOMER_KEY, DEMO_DEVELOPER_KEY

AUTH = {"Authorization": f"ODFHIR {DEMO_DEVELOPER_KEY}/{DEMO_CUSTOMER_KEY}"}


def read_all(od, path: str, **params) -> list[dict]:
    rows, offset = [], 0
    while True:
        page = httpx.get(f"{od.base_url}/{path}", params={**params, "Limit": 100, "Offset": offset},
                         headers=AUTH, timeout=10).json()
        rows += page
        if len(page) < 100:
            return rows
        offset += len(page)


def test_a_datetstamp_read_keeps_primary_key_order_across_writes(od):
    od.seed(patients=0, appointments=350, providers=1, laboratories=0)
    od.tick(5)
    since = od.store.stamp()
    for apt in (300, 7, 150):
        od.change("appointments", apt, Note="changed")
    assert [r["AptNum"] for r in read_all(od, "appointments", DateTStamp=since)] == [7, 150, 300]
    assert [r["AptNum"] for r in read_all(od, "appointments")] == list(range(1, 351))
    od.tick(5)
    od.change("appointments", 7, Note="again")  # the cached keys of the earlier read are not reused
    later = od.store.stamp()
    assert [r["AptNum"] for r in read_all(od, "appointments", DateTStamp=since)] == [7, 150, 300]
    assert [r["AptNum"] for r in read_all(od, "appointments", DateTStamp=later)] == [7]


def test_a_deleted_appointment_is_gone_from_every_later_read(od):
    od.seed(patients=0, appointments=120, providers=1, laboratories=0)
    assert len(read_all(od, "appointments")) == 120
    answer = httpx.delete(f"{od.url}/_sandbox/appointments/42", timeout=10)
    assert answer.status_code == 204
    keys = [r["AptNum"] for r in read_all(od, "appointments")]
    assert 42 not in keys and len(keys) == 119
    assert httpx.delete(f"{od.url}/_sandbox/appointments/42", timeout=10).status_code == 404
    history = read_all(od, "histappointments", HistApptAction="Deleted")
    assert [(r["AptNum"], r["HistApptAction"]) for r in history] == [(42, "Deleted")]
    today = history[0]["HistDateTStamp"][:10]
    assert read_all(od, "histappointments", HistApptAction="Deleted", dateStart=today) == history
    assert read_all(od, "histappointments", HistApptAction="Deleted", dateStart="2999-01-01") == []
    assert read_all(od, "histappointments", HistApptAction="Created") == []
    bad = httpx.get(f"{od.base_url}/histappointments", params={"dateStart": "yesterday"}, headers=AUTH, timeout=10)
    assert bad.status_code == 400 and "yyyy-MM-dd" in bad.text


def test_the_control_api_changes_a_patient_as_a_pms_user_would(od):
    od.seed(patients=3, appointments=0, providers=1, laboratories=0)
    answer = httpx.post(f"{od.url}/_sandbox/patients/2", json={"PatStatus": "Deceased"}, timeout=10)
    assert answer.status_code == 200 and answer.json()["PatStatus"] == "Deceased"
    assert httpx.post(f"{od.url}/_sandbox/patients/99", json={"PatStatus": "Deceased"}, timeout=10).status_code == 404
