"""An Open Dental sandbox: the REST API as Lab Manager's PMS adapter reads it (docs/vendors/opendental.md),
over real HTTP, on the shared stack (sandbox/server.py). It imports nothing of the portal.

  python -m sandbox.opendental --port 5057 --demo   (make run starts it)
  OpenDentalSandbox().start()                       (tests: a free port, in a thread)

Under /api/v1, every request carries `Authorization: ODFHIR {DeveloperKey}/{CustomerKey}` (401
otherwise; `keys` are what it accepts):
  GET  /patients/Simple?DateTStamp&ClinicNum&Limit&Offset     GET /patients/{PatNum}
  GET  /appointments?DateTStamp&PatNum&AptStatus&ClinicNum&Limit&Offset
  GET  /providers?DateTStamp&Limit&Offset                    GET /laboratories?Limit&Offset
  GET  /histappointments?HistApptAction&AptNum&PatNum&ClinicNum&date&dateStart&dateEnd&Limit&Offset
       (the dates are those of HistDateTStamp; the sandbox keeps only "Deleted" history rows, one
       per deleted appointment: Open Dental also keeps Created, Changed, Missed and Cancelled ones)
  GET  /labcases?PatNum&LaboratoryNum&AptNum&Limit&Offset     GET /labcases/{LabCaseNum}
  POST /labcases (PatNum, LaboratoryNum, ProvNum required)    PUT /labcases/{LabCaseNum}
Lists are ordered by primary key, at most 100 a page (`Limit` above 100 is read as 100), `DateTStamp`
keeps rows changed at or after that time; every item carries `serverDateTime` (the sandbox's clock
when the query ran). Times are "YYYY-MM-DD HH:MM:SS" of the sandbox's clock, which tests can move
on (`tick`). Booleans are the strings "true"/"false", as Open Dental sends them.

Faults on demand, per endpoint name (`fault(endpoint, kind, count)`): "500", "429" (with
Retry-After), "hang" (seconds), "malformed" (200 with a body that is not JSON), "lost" (the request is
carried out, then answered 500: the caller cannot know it committed). `during(endpoint, n, fn)`
runs `fn` once, just before the n-th answer of that endpoint: a row changing while pages are read.

Control API under /_sandbox (no auth; for make run and curl): POST /reset, POST /seed
{"patients", "appointments", ...}, POST /faults {"endpoint", "kind", "count"}, GET /counters,
GET /requests, GET /labcases, POST /patients, POST /patients/{PatNum} and POST /appointments/{AptNum}
{fields to change},
DELETE /appointments/{AptNum} (gone: later reads skip it, /histappointments lists it as Deleted;
deleting it again answers 404).
"""
from __future__ import annotations

import argparse
import bisect
import collections
import datetime as dt
import logging
import os
import random
import threading
import time

from werkzeug.wrappers import Request, Response

from sandbox.server import HOST, ApiError, Routes, Server, int_arg, json_body, json_response, serve_until_stopped

log = logging.getLogger("sandbox.opendental")
PORT = 5057
LIMIT = 100
DEMO_DEVELOPER_KEY = "demoDevKey0penDental"
DEMO_CUSTOMER_KEY = "demoCustomerKey1234"
STAMP = "%Y-%m-%d %H:%M:%S"
NONE_DATE = "0001-01-01"
NONE_TIME = "0001-01-01 00:00:00"

ENDPOINTS = ("patients", "patient", "appointments", "histappointments", "providers", "laboratories", "labcases",
             "labcase", "labcase_create", "labcase_update")
APT_STATUSES = ("Scheduled", "Complete", "UnschedList", "ASAP", "Broken", "Planned", "PtNote", "PtNoteCompleted")
PAT_STATUSES = ("Patient", "NonPatient", "Inactive", "Archived", "Deceased", "Prospective")

FIRST = ["Ava", "Liam", "Sofia", "Noah", "Mia", "Ethan", "Zoe", "Lucas", "Ella", "Mateo", "Aria", "Leo",
         "Nora", "Omar", "Ivy", "Hugo", "Lena", "Ravi", "Chloe", "Felix"]
LAST = ["Thompson", "Patel", "Garcia", "Nguyen", "Kim", "Okafor", "Rossi", "Schmidt", "Dubois", "Silva",
        "Cohen", "Ali", "Jensen", "Novak", "Moreau", "Tanaka", "Walsh", "Costa", "Haddad", "Berg"]
PROCS = ["Crown seat #36", "Seat bridge 14-16", "Try-in veneers", "Prophy", "Exam", "Deliver implant crown",
         "Fillings", "Crown prep #11"]


def yes(value: bool) -> str:
    return "true" if value else "false"


class Store:
    """All state under one lock: the rows of each table, the clock, faults, hooks, the request log."""

    def __init__(self):
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.keys: set[tuple[str, str]] = {(DEMO_DEVELOPER_KEY, DEMO_CUSTOMER_KEY)}
            self.tables: dict[str, dict[int, dict]] = {t: {} for t in (
                "patients", "appointments", "histappointments", "providers", "laboratories", "labcases")}
            self.next_pk = {t: 1 for t in self.tables}
            # Each table's rows by (DateTStamp, primary key), so a DateTStamp read finds its rows by
            # bisecting instead of walking the table; `matches` keeps recent reads' matching keys in
            # key order, so the next page of a read is a slice; any write clears it.
            self.by_stamp: dict[str, list[tuple[str, int]]] = {t: [] for t in self.tables}
            self.matches: dict[tuple, list[int]] = {}
            self.offset = 0.0  # seconds added to the real clock (tick)
            self.faults: dict[str, collections.deque] = {}
            self.hooks: dict[str, list] = {}
            self.answers: collections.Counter = collections.Counter()
            self.counters: collections.Counter = collections.Counter()
            self.requests: collections.deque[dict] = collections.deque(maxlen=5000)

    # --- the clock ---
    def now(self) -> dt.datetime:
        return (dt.datetime.now() + dt.timedelta(seconds=self.offset)).replace(microsecond=0)

    def stamp(self) -> str:
        return self.now().strftime(STAMP)

    def tick(self, seconds: float = 1.0) -> None:
        with self.lock:
            self.offset += seconds

    # --- rows ---
    def insert(self, table: str, row: dict, stamp: str | None = None) -> dict:
        key = {"patients": "PatNum", "appointments": "AptNum", "providers": "ProvNum",
               "laboratories": "LaboratoryNum", "labcases": "LabCaseNum", "histappointments": "HistApptNum"}[table]
        with self.lock:
            pk = self.next_pk[table]
            self.next_pk[table] += 1
            row = {key: pk, **row, "DateTStamp": stamp or self.stamp()}
            self.tables[table][pk] = row
            bisect.insort(self.by_stamp[table], (row["DateTStamp"], pk))
            self._moved()
            return dict(row)

    def change(self, table: str, pk: int, **fields) -> dict:
        with self.lock:
            row = self.tables[table].get(pk)
            if row is None:
                raise ApiError(404, f"no {table} row {pk}")
            self._unindex(table, row, pk)
            row.update(fields)
            row["DateTStamp"] = self.stamp()
            bisect.insort(self.by_stamp[table], (row["DateTStamp"], pk))
            self._moved()
            return dict(row)

    def delete(self, table: str, pk: int) -> None:
        """The row is gone, as when a PMS user deletes an appointment: no later read of the table
        returns it (a DateTStamp read shows no tombstone); a deleted appointment leaves a "Deleted"
        row in histappointments, as Open Dental's appointment history does. Again: a 404."""
        with self.lock:
            row = self.tables[table].pop(pk, None)
            if row is None:
                raise ApiError(404, f"no {table} row {pk}")
            self._unindex(table, row, pk)
            if table == "appointments":
                self.insert("histappointments", {"HistUserNum": 0, "HistDateTStamp": self.stamp(),
                                                 "HistApptAction": "Deleted", "ApptSource": "None", **row})
            self._moved()

    def _unindex(self, table: str, row: dict, pk: int) -> None:
        index = self.by_stamp[table]
        at = bisect.bisect_left(index, (row["DateTStamp"], pk))
        if at < len(index) and index[at] == (row["DateTStamp"], pk):
            del index[at]

    def _moved(self) -> None:
        self.matches.clear()

    def matching(self, table: str, since: str, query: tuple, keep) -> list[int]:
        """The keys of `table`'s rows stamped at or after `since` that `keep`, in key order; the
        same read's next page reuses the list until a row is written."""
        with self.lock:
            cache_key = (table, since, query)
            keys = self.matches.get(cache_key)
            if keys is None:
                rows = self.tables[table]
                if since:
                    index = self.by_stamp[table]
                    keys = sorted(pk for _, pk in index[bisect.bisect_left(index, (since, 0)):])
                else:
                    keys = list(rows)  # inserted in key order, keys only grow
                keys = [pk for pk in keys if keep(rows[pk])]
                if len(self.matches) > 64:
                    self.matches.clear()
                self.matches[cache_key] = keys
            return keys

    # --- faults and hooks ---
    def add_fault(self, endpoint: str, kind: str, count: int = 1, retry_after: int = 1, seconds: float = 1.0):
        if endpoint not in ENDPOINTS:
            raise ApiError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}")
        if str(kind) not in ("429", "500", "hang", "malformed", "lost", "401", "400"):
            raise ApiError(400, "kind must be 429, 500, 401, 400, hang, malformed or lost")
        with self.lock:
            queue = self.faults.setdefault(endpoint, collections.deque())
            for _ in range(int(count)):
                queue.append({"kind": str(kind), "retry_after": retry_after, "seconds": float(seconds)})

    def take_fault(self, endpoint: str) -> dict | None:
        with self.lock:
            queue = self.faults.get(endpoint)
            return queue.popleft() if queue else None


class OpenDentalApp(Routes):
    def __init__(self, store: Store):
        self.store = store
        api = "/api/v1"
        super().__init__([
            (f"{api}/patients/Simple", "GET", "patients", self.patients),
            (f"{api}/patients/<int:pat_num>", "GET", "patient", self.patient),
            (f"{api}/appointments", "GET", "appointments", self.appointments),
            (f"{api}/histappointments", "GET", "histappointments", self.histappointments),
            (f"{api}/providers", "GET", "providers", self.providers),
            (f"{api}/laboratories", "GET", "laboratories", self.laboratories),
            (f"{api}/labcases", "GET", "labcases", self.labcases),
            (f"{api}/labcases/<int:num>", "GET", "labcase", self.labcase),
            (f"{api}/labcases", "POST", "labcase_create", self.create_labcase),
            (f"{api}/labcases/<int:num>", "PUT", "labcase_update", self.update_labcase),
            ("/_sandbox/reset", "POST", "c_reset", self.c_reset),
            ("/_sandbox/seed", "POST", "c_seed", self.c_seed),
            ("/_sandbox/faults", "POST", "c_faults", self.c_faults),
            ("/_sandbox/counters", "GET", "c_counters", self.c_counters),
            ("/_sandbox/requests", "GET", "c_requests", self.c_requests),
            ("/_sandbox/labcases", "GET", "c_labcases", self.c_labcases),
            ("/_sandbox/patients", "POST", "c_patient", self.c_patient),
            ("/_sandbox/patients/<int:num>", "POST", "c_change_patient", self.c_change_patient),
            ("/_sandbox/appointments/<int:num>", "POST", "c_appointment", self.c_appointment),
            ("/_sandbox/appointments/<int:num>", "DELETE", "c_delete_appointment", self.c_delete_appointment),
        ])
        self.lost: set[int] = set()

    # --- every request ---
    def before(self, name: str, request: Request) -> None:
        if name.startswith("c_"):
            return
        store = self.store
        with store.lock:
            store.counters[name] += 1
            store.requests.append({"endpoint": name, "method": request.method, "path": request.path,
                                   "query": request.args.to_dict(), "body": request.get_json(silent=True)})
        scheme, _, keys = request.headers.get("Authorization", "").partition(" ")
        developer, _, customer = keys.strip().partition("/")
        if scheme != "ODFHIR" or (developer, customer) not in store.keys:
            raise ApiError(401, "Invalid Authorization header: ODFHIR {DeveloperKey}/{CustomerKey} expected")
        with store.lock:
            store.answers[name] += 1
            hooks = [fn for n, fn in store.hooks.get(name, []) if n == store.answers[name]]
        for fn in hooks:
            fn()
        fault = store.take_fault(name)
        if fault is None:
            return
        kind = fault["kind"]
        if kind == "hang":
            time.sleep(fault["seconds"])
        elif kind == "429":
            raise ApiError(429, "Too many requests", headers={"Retry-After": str(fault["retry_after"])})
        elif kind in ("500", "401", "400"):
            raise ApiError(int(kind), {"500": "Internal server error", "401": "Customer key revoked",
                                       "400": "Invalid request"}[kind])
        elif kind in ("malformed", "lost"):
            request.environ["sandbox.fault"] = kind

    def after(self, name: str, request: Request, response: Response) -> None:
        fault = request.environ.get("sandbox.fault")
        if fault == "malformed" and response.status_code < 300:
            response.set_data(b"<html>Service Unavailable</html>{")
        elif fault == "lost":
            response.status_code = 500
            response.set_data(b'{"error": "the connection was reset"}')

    # --- reading ---
    def _page(self, request: Request, table: str, keep=lambda row: True) -> Response:
        limit = min(int_arg(request, "Limit", LIMIT, 1), LIMIT)
        offset = int_arg(request, "Offset", 0, 0)
        since = request.args.get("DateTStamp", "")
        if since:
            try:
                dt.datetime.strptime(since, STAMP)
            except ValueError:
                raise ApiError(400, f"DateTStamp must be YYYY-MM-DD HH:MM:SS, not {since!r}") from None
        clinic = request.args.get("ClinicNum", "")
        query = tuple(sorted((k, v) for k, v in request.args.items() if k not in ("Limit", "Offset")))
        with self.store.lock:
            now = self.store.stamp()
            keys = self.store.matching(table, since, query, lambda row: keep(row) and (
                not clinic or str(row.get("ClinicNum", 0)) == clinic))
            rows = self.store.tables[table]
            page = [{**rows[pk], "serverDateTime": now} for pk in keys[offset:offset + limit]]
        return json_response(page)

    def patients(self, request: Request) -> Response:
        return self._page(request, "patients")

    def patient(self, request: Request, pat_num: int) -> Response:
        with self.store.lock:
            row = self.store.tables["patients"].get(pat_num)
        if row is None:
            raise ApiError(404, f"Patient {pat_num} not found")
        return json_response(row)

    def appointments(self, request: Request) -> Response:
        pat, status = request.args.get("PatNum", ""), request.args.get("AptStatus", "")
        return self._page(request, "appointments", lambda r: (not pat or str(r["PatNum"]) == pat)
                          and (not status or r["AptStatus"] == status))

    def histappointments(self, request: Request) -> Response:
        equal = {k: request.args[k] for k in ("HistApptAction", "AptNum", "PatNum", "AptStatus")
                 if request.args.get(k)}
        day, start, end = (request.args.get(k, "") for k in ("date", "dateStart", "dateEnd"))
        for name, value in (("date", day), ("dateStart", start), ("dateEnd", end)):
            if value:
                try:
                    dt.date.fromisoformat(value)
                except ValueError:
                    raise ApiError(400, f"{name} must be yyyy-MM-dd, not {value!r}") from None

        def keep(row: dict) -> bool:
            on = row["HistDateTStamp"][:10]
            return (all(str(row.get(k)) == v for k, v in equal.items()) and (not day or on == day)
                    and (not start or on >= start) and (not end or on <= end))
        return self._page(request, "histappointments", keep)

    def providers(self, request: Request) -> Response:
        return self._page(request, "providers")

    def laboratories(self, request: Request) -> Response:
        return self._page(request, "laboratories")

    def labcases(self, request: Request) -> Response:
        filters = {k: request.args[k] for k in ("PatNum", "LaboratoryNum", "AptNum", "PlannedAptNum", "ProvNum")
                   if request.args.get(k)}
        return self._page(request, "labcases", lambda r: all(str(r.get(k)) == v for k, v in filters.items()))

    def labcase(self, request: Request, num: int) -> Response:
        with self.store.lock:
            row = self.store.tables["labcases"].get(num)
        if row is None:
            raise ApiError(404, f"LabCase {num} not found")
        return json_response(row)

    # --- writing ---
    DATES = ("DateTimeDue", "DateTimeSent", "DateTimeRecd", "DateTimeChecked")

    def _check_dates(self, body: dict) -> None:
        for name in self.DATES:
            if name in body:
                try:
                    dt.datetime.strptime(str(body[name]), STAMP)
                except ValueError:
                    raise ApiError(400, f"{name} must be YYYY-MM-DD HH:MM:SS, not {body[name]!r}") from None

    def create_labcase(self, request: Request) -> Response:
        body = json_body(request)
        store = self.store
        for name, table in (("PatNum", "patients"), ("LaboratoryNum", "laboratories"), ("ProvNum", "providers")):
            if not isinstance(body.get(name), int):
                raise ApiError(400, f"{name} is required")
            if body[name] not in store.tables[table]:
                raise ApiError(400, f"{name} {body[name]} does not exist")
        self._check_dates(body)
        row = {"PatNum": body["PatNum"], "LaboratoryNum": body["LaboratoryNum"], "ProvNum": body["ProvNum"],
               "AptNum": int(body.get("AptNum") or 0), "PlannedAptNum": int(body.get("PlannedAptNum") or 0),
               "DateTimeDue": body.get("DateTimeDue", NONE_TIME), "DateTimeCreated": store.stamp(),
               "DateTimeSent": NONE_TIME, "DateTimeRecd": NONE_TIME, "DateTimeChecked": NONE_TIME,
               "Instructions": str(body.get("Instructions", "")), "LabFee": float(body.get("LabFee") or 0),
               "InvoiceNum": str(body.get("InvoiceNum", ""))}
        return json_response(store.insert("labcases", row), 201)

    def update_labcase(self, request: Request, num: int) -> Response:
        body = json_body(request)
        self._check_dates(body)
        allowed = {*self.DATES, "Instructions", "LabFee", "InvoiceNum", "AptNum", "PlannedAptNum"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError(400, f"{', '.join(unknown)} cannot be changed")
        return json_response(self.store.change("labcases", num, **body))

    # --- control ---
    def c_reset(self, request: Request) -> Response:
        self.store.reset()
        return Response(status=204)

    def c_seed(self, request: Request) -> Response:
        body = request.get_json(silent=True) or {}
        return json_response(seed(self.store, **{k: int(v) for k, v in body.items()}), 201)

    def c_faults(self, request: Request) -> Response:
        body = json_body(request)
        self.store.add_fault(str(body.get("endpoint")), str(body.get("kind")), int(body.get("count", 1)),
                             int(body.get("retry_after", 1)))
        return json_response(body, 201)

    def c_counters(self, request: Request) -> Response:
        with self.store.lock:
            return json_response(dict(self.store.counters))

    def c_requests(self, request: Request) -> Response:
        with self.store.lock:
            return json_response(list(self.store.requests))

    def c_labcases(self, request: Request) -> Response:
        with self.store.lock:
            return json_response(list(self.store.tables["labcases"].values()))

    def c_patient(self, request: Request) -> Response:
        return json_response(self.store.insert("patients", patient_row(**json_body(request))), 201)

    def c_change_patient(self, request: Request, num: int) -> Response:
        return json_response(self.store.change("patients", num, **json_body(request)))

    def c_appointment(self, request: Request, num: int) -> Response:
        return json_response(self.store.change("appointments", num, **json_body(request)))

    def c_delete_appointment(self, request: Request, num: int) -> Response:
        self.store.delete("appointments", num)
        return Response(status=204)


def patient_row(FName: str, LName: str, Birthdate: str = NONE_DATE, ChartNumber: str = "",
                PatStatus: str = "Patient", ClinicNum: int = 0, PriProv: int = 0, Email: str = "",
                WirelessPhone: str = "", Preferred: str = "") -> dict:
    return {"LName": LName, "FName": FName, "Preferred": Preferred, "Birthdate": Birthdate,
            "PatStatus": PatStatus, "ChartNumber": ChartNumber, "Email": Email, "WirelessPhone": WirelessPhone,
            "ClinicNum": ClinicNum, "PriProv": PriProv}


def seed(store: Store, patients: int = 0, appointments: int = 0, providers: int = 3, laboratories: int = 2,
         seed_value: int = 12, clinics: int = 0) -> dict:
    """Bulk rows for tests, the bench and the demo: stamps spread over the past 30 days, one a second,
    older rows first, so a first sync has history to read and nothing shares one second."""
    rnd = random.Random(seed_value)
    store_now = store.now()
    total = patients + appointments + providers + laboratories
    start = store_now - dt.timedelta(seconds=total + 60)
    counter = iter(range(total + 1))

    def stamp() -> str:
        return (start + dt.timedelta(seconds=next(counter))).strftime(STAMP)

    with store.lock:
        first_prov = store.next_pk["providers"]
        for i in range(providers):
            n = first_prov + i
            store.insert("providers", {"Abbr": f"DR{n}", "FName": FIRST[n % 20], "LName": LAST[(n * 7) % 20],
                                       "IsHidden": "false"}, stamp())
        first_lab = store.next_pk["laboratories"]
        for i in range(laboratories):
            n = first_lab + i
            store.insert("laboratories", {"Description": f"Lab {n} Dental Studio", "Phone": f"555-010{n % 10}",
                                          "Email": f"cases@lab{n}.example", "IsHidden": "false"}, stamp())
        prov_nums = list(store.tables["providers"]) or [0]
        first_pat = store.next_pk["patients"]
        for i in range(patients):
            n = first_pat + i
            born = dt.date(1940, 1, 1) + dt.timedelta(days=rnd.randrange(0, 25000))
            store.insert("patients", patient_row(
                FIRST[n % 20], f"{LAST[(n // 20) % 20]}{'' if n < 400 else n // 400}", born.isoformat(),
                f"C{n:06d}", ClinicNum=(n % clinics + 1) if clinics else 0, PriProv=rnd.choice(prov_nums),
                Email=f"patient{n}@example.net", WirelessPhone=f"555-{n % 10000:04d}"), stamp())
        pat_nums = list(store.tables["patients"])
        today = store_now.replace(hour=8, minute=0, second=0)
        for _ in range(appointments):
            when = today + dt.timedelta(days=rnd.randrange(-60, 90), minutes=30 * rnd.randrange(0, 18))
            status = "Scheduled" if when > store_now else rnd.choice(["Complete", "Complete", "Broken"])
            store.insert("appointments", {
                "PatNum": rnd.choice(pat_nums) if pat_nums else 0, "AptStatus": status,
                "AptDateTime": when.strftime(STAMP), "ProvNum": rnd.choice(prov_nums),
                "ProcDescript": rnd.choice(PROCS), "Note": "", "ClinicNum": 0}, stamp())
    return {t: len(rows) for t, rows in store.tables.items()}


class OpenDentalSandbox:
    """The sandbox in a thread, for tests and `python -m sandbox.opendental`. `.url` is its root;
    `.base_url` is what an integration's base URL setting holds."""

    def __init__(self, host: str = HOST, port: int = 0):
        self.store = Store()
        self.app = OpenDentalApp(self.store)
        self.host, self.port = host, port
        self.server: Server | None = None

    def start(self) -> OpenDentalSandbox:
        self.server = Server(self.app, self.host, self.port, name="opendental-sandbox").start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    # --- control, without HTTP ---
    def reset(self) -> None:
        self.store.reset()

    def add_keys(self, developer: str, customer: str) -> None:
        with self.store.lock:
            self.store.keys.add((developer, customer))

    def revoke_keys(self, developer: str, customer: str) -> None:
        with self.store.lock:
            self.store.keys.discard((developer, customer))

    def seed(self, **counts) -> dict:
        return seed(self.store, **counts)

    def tick(self, seconds: float = 1.0) -> None:
        self.store.tick(seconds)

    def add(self, table: str, **row) -> dict:
        return self.store.insert(table, patient_row(**row) if table == "patients" else row)

    def change(self, table: str, pk: int, **fields) -> dict:
        return self.store.change(table, pk, **fields)

    def delete(self, table: str, pk: int) -> None:
        self.store.delete(table, pk)

    def row(self, table: str, pk: int) -> dict:
        with self.store.lock:
            return dict(self.store.tables[table][pk])

    def rows(self, table: str) -> list[dict]:
        with self.store.lock:
            return [dict(r) for r in self.store.tables[table].values()]

    def fault(self, endpoint: str, kind: str | int, count: int = 1, retry_after: int = 1, seconds: float = 1.0):
        self.store.add_fault(endpoint, str(kind), count, retry_after, seconds)

    def during(self, endpoint: str, answer: int, fn) -> None:
        """Run `fn()` once, just before the `answer`-th answer of `endpoint` (counted from now)."""
        with self.store.lock:
            self.store.hooks.setdefault(endpoint, []).append((self.store.answers[endpoint] + answer, fn))

    @property
    def counters(self) -> dict:
        with self.store.lock:
            return dict(self.store.counters)

    def requests(self, endpoint: str | None = None) -> list[dict]:
        with self.store.lock:
            return [dict(r) for r in self.store.requests if endpoint in (None, r["endpoint"])]

    def clear_log(self) -> None:
        with self.store.lock:
            self.store.counters.clear()
            self.store.requests.clear()


def demo(store: Store, patients: list[dict]) -> None:
    """The demo practice's patients as Open Dental has them (the same chart numbers, so they match),
    each with a seat appointment (at the time the demo practice has it booked, when given), and a
    few hundred more patients."""
    seed(store, patients=200, appointments=400, providers=0, laboratories=0)
    store.insert("providers", {"Abbr": "DRSMITH", "FName": "Anna", "LName": "Smith", "IsHidden": "false"})
    store.insert("laboratories", {"Description": "Northside Dental Lab", "Phone": "555-0100",
                                  "Email": "cases@northside.example", "IsHidden": "false"})
    prov = max(store.tables["providers"])
    for i, p in enumerate(patients):
        row = store.insert("patients", patient_row(p["first_name"], p["last_name"], p.get("date_of_birth") or NONE_DATE,
                                                   p.get("chart_number") or "", PriProv=prov))
        when = (dt.datetime.strptime(p["seat"], "%Y-%m-%d %H:%M") if p.get("seat") else
                (store.now() + dt.timedelta(days=5 + i)).replace(hour=9, minute=0, second=0))
        store.insert("appointments", {"PatNum": row["PatNum"], "AptStatus": "Scheduled",
                                      "AptDateTime": when.strftime(STAMP), "ProvNum": prov,
                                      "ProcDescript": "Crown seat", "Note": "", "ClinicNum": 0})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.opendental", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--demo", action="store_true", help="the demo practice's patients and a few hundred more")
    parser.add_argument("--patient", action="append", default=[], metavar="FIRST,LAST,CHART,YYYY-MM-DD[,SEAT]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="opendental-sandbox: %(message)s")
    sandbox = OpenDentalSandbox(args.host, args.port).start()
    if args.demo:
        texts = args.patient or [p for p in os.environ.get("VENDOR_DEMO_PATIENTS", "").split(";") if p.strip()]
        people = []
        for text in texts:
            parts = [x.strip() for x in text.split(",")] + ["", "", "", ""]
            if parts[0] and parts[1]:  # the fifth: the patient's next seat appointment, booked the same here
                people.append({"first_name": parts[0], "last_name": parts[1], "chart_number": parts[2],
                               "date_of_birth": parts[3] or None, "seat": parts[4] or None})
        demo(sandbox.store, people)
    log.info("Open Dental at %s (ODFHIR %s/%s), control at %s/_sandbox", sandbox.base_url, DEMO_DEVELOPER_KEY,
             DEMO_CUSTOMER_KEY, sandbox.url)
    serve_until_stopped(sandbox.stop)


if __name__ == "__main__":
    main()
