"""iTero jobs for the Rx of a case (portal/integrations/itero/rx.py): send it to the scanner, withdraw it,
and ask for a rescan. Each takes a row id, builds its own app context, claims the row and calls
iTero; an unexpected error is not swallowed (RQ's failed registry sees it, and the sweep enqueues
the row again once its lease is over)."""
from __future__ import annotations

from jobs import app as _app
from portal.queue import RETURN_TO_DOCTOR, SEND_RX, WITHDRAW_RX


def send_rx(request_id: int) -> str:
    from portal.audit.actor import Actor
    from portal.integrations.itero import rx

    with _app().app_context():
        return rx.send(request_id, Actor.job(SEND_RX.func))


def withdraw_rx(request_id: int) -> str:
    from portal.audit.actor import Actor
    from portal.integrations.itero import rx

    with _app().app_context():
        return rx.withdraw(request_id, Actor.job(WITHDRAW_RX.func))


def return_to_doctor(rescan_id: int) -> str:
    from portal.audit.actor import Actor
    from portal.integrations.itero import rx

    with _app().app_context():
        return rx.return_scan(rescan_id, Actor.job(RETURN_TO_DOCTOR.func))
