"""A case's lab case in the practice's PMS: one write (portal/integrations/writeback.py), in its own
app context. A refusal is recorded on the row and shown on the case; a crash reaches RQ's failed
registry and the row's lease lets the sweep try again."""
from __future__ import annotations

from jobs import app as _app


def write_lab_case(row_id: int) -> str:
    from portal.integrations import writeback

    with _app().app_context():
        return writeback.deliver(row_id)
