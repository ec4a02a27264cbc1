"""The outbox sweep: hand RQ every piece of work the database says is due: dispatches to send,
order events (notices) to send, lab events stored but not yet applied, mail, scanner polls that
are due (scanners and the practice's PMS), vendor notifications not yet acted on, lab cases to
write to the PMS, Rx / rescan requests to a scanner still waiting,
and large scan files still waiting to be read (with the tidy-up of store folders no scan refers to).

Run it every OUTBOX_SWEEP_SECONDS with RQ's cron scheduler, which loads this module:

    rq cron --url "$REDIS_URL" --path . jobs.sweep

Loading the module registers `run` with `rq.cron`; the scheduler enqueues it on the app's queue
and a worker runs it. Every sweep is idempotent (deterministic job ids), so two schedulers, or a
sweep that overlaps the relay, do no harm.
"""
from __future__ import annotations

import importlib.util
import logging

from rq import cron

from jobs import app as _app
from portal.config import Config

log = logging.getLogger(__name__)


def run() -> dict:
    from portal.dispatch import notices
    from portal.dispatch import services as dispatch_services
    from portal.extensions import db
    from portal.integrations import sync as scanner_sync
    from portal.integrations import writeback as pms_writeback
    from portal.integrations.itero import rx as scanner_rx
    from portal.labapi import services as labapi_services
    from portal.scans import uploads as scan_uploads

    with _app().app_context():
        result = {"dispatch": dispatch_services.sweep(), "notices": notices.sweep(),
                  "lab_events": labapi_services.sweep(), "scanners": scanner_sync.sweep(),
                  "scanner_requests": scanner_rx.sweep(), "scan_files": scan_uploads.sweep(),
                  "pms_writes": pms_writeback.sweep()}
        db.session.rollback()  # these sweeps only read
        mail_sweep = _mail_sweep()
        if mail_sweep is not None:
            result["mail"] = mail_sweep()
            db.session.commit()
        return result


def _mail_sweep():
    """Part of the mail outbox, when that feature is installed."""
    if importlib.util.find_spec("portal.mail") is None or importlib.util.find_spec("portal.mail.services") is None:
        return None
    from portal.mail import services as mail_services

    return getattr(mail_services, "sweep", None)


def _register() -> None:
    from portal.queue import SWEEP

    config = Config()
    interval = config.OUTBOX_SWEEP_SECONDS
    # ttl: a sweep nobody picked up before the next one is due is dropped, so they don't pile up
    # while the workers are away.
    cron.register(run, queue_name=config.RQ_QUEUE, interval=interval, ttl=max(2 * interval, 60),
                  name="outbox-sweep", **SWEEP.options(config.as_dict()))


_register()
