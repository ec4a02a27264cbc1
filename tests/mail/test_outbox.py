"""The mail outbox against a real SMTP server on loopback, real RQ workers and a real Redis."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rq.job import Job, JobStatus
from sqlalchemy import select

from jobs import mail as mail_job
from portal.audit.models import AuditEvent
from portal.extensions import db as _db
from portal.mail.models import MailMessage
from portal.mail.services import PermanentMailError, TransientMailError, queue_mail, sweep
from tests.mail.conftest import SmtpServer, drain, free_port

ROOT = Path(__file__).resolve().parents[2]


def _queue(**kw) -> MailMessage:
    fields = dict(to="lab@lab.test", cc="boss@lab.test, lab@lab.test", subject="Work order LC-1",
                  text="Plain body https://example.test/lab/x", html="<p>HTML body</p>", kind="work_order")
    fields.update(kw)
    return queue_mail(**fields)


def _row(mail_id: int) -> MailMessage:
    _db.session.expire_all()
    return _db.session.get(MailMessage, mail_id)


def test_job_is_enqueued_only_after_commit(mail_queue):
    mail = _queue()
    assert mail_queue.count == 0  # nothing in Redis while the transaction is open
    _db.session.commit()
    assert mail_queue.job_ids == [f"mail-{mail.id}"]
    job = Job.fetch(f"mail-{mail.id}", connection=mail_queue.connection)
    assert job.func_name == "jobs.mail.send" and job.args == (mail.id,) and job.retries_left == 3


def test_rollback_sends_nothing(mail_queue):
    _queue()
    _db.session.rollback()
    assert mail_queue.count == 0 and not _db.session.scalars(select(MailMessage)).all()


def test_a_mail_needs_a_recipient(db):
    with pytest.raises(ValueError):
        _queue(to=" , ")


def _worker_env(app, smtp_port: int, queue_name: str, instance) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "LM_", "SMTP_", "MAIL_"))}
    env.update({
        "LM_ENV": "development", "LM_INSTANCE_DIR": str(instance), "SECRET_KEY": "worker-test-secret",
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "REDIS_URL": app.config["REDIS_URL"],
        "MAIL_BACKEND": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp_port), "SMTP_TIMEOUT": "5",
        "MAIL_FROM": "Lab Manager <labs@practice.test>", "RQ_QUEUE": queue_name,
    })
    return env


def test_delivered_once_by_a_real_worker(app, mail_queue, smtp_server, use_smtp, tmp_path):
    use_smtp(smtp_server.port)
    mail = _queue(secret="https://example.test/lab/x")
    _db.session.commit()
    rq = str(Path(sys.executable).parent / "rq")
    subprocess.run([rq, "worker", "--burst", "--url", app.config["REDIS_URL"], "--path", str(ROOT),
                    "--name", f"mailtest-{mail.id}-{os.getpid()}", mail_queue.name],
                   env=_worker_env(app, smtp_server.port, mail_queue.name, tmp_path), cwd=ROOT,
                   check=True, timeout=60, capture_output=True)
    assert len(smtp_server.inbox.messages) == 1
    mail_from, rcpt_tos, message = smtp_server.inbox.messages[0]
    assert mail_from == "labs@practice.test"
    assert sorted(rcpt_tos) == ["boss@lab.test", "lab@lab.test"]
    assert message["To"] == "lab@lab.test" and message["Cc"] == "boss@lab.test"
    assert message["Message-ID"] == _row(mail.id).message_id
    assert message.get_body(("plain",)).get_content().startswith("Plain body https://example.test/lab/x")
    assert "<p>HTML body</p>" in message.get_body(("html",)).get_content()
    row = _row(mail.id)
    assert (row.state, row.attempts, row.last_error) == ("sent", 1, "")
    # Delivered over SMTP: the private link is scrubbed from what the database keeps.
    assert "example.test/lab/x" not in row.text_body and row.link_secret is None
    assert _db.session.scalars(select(AuditEvent).where(AuditEvent.action == "mail.sent")).one().entity_id == str(mail.id)
    # Running the job again (a duplicate, a retry after a crash) sends nothing more.
    assert mail_job.send(mail.id) == "sent"
    assert sweep() == 0
    assert len(smtp_server.inbox.messages) == 1


def test_smtp_down_then_up_delivers_once(app, mail_queue, use_smtp):
    port = free_port()  # nothing listens here yet
    use_smtp(port, MAIL_RETRY_INTERVALS=[0, 0])  # retry at once, so the test need not wait
    mail = _queue()
    _db.session.commit()
    drain(mail_queue)  # first attempt and both retries: connection refused
    row = _row(mail.id)
    assert row.state == "pending" and row.attempts == 3
    assert "ConnectionRefused" in row.last_error
    job = Job.fetch(f"mail-{mail.id}", connection=mail_queue.connection)
    assert job.get_status() == JobStatus.FAILED  # RQ saw the failure: nothing was swallowed
    assert sweep() == 1  # the sweep hands it to RQ again; still down, so still pending
    drain(mail_queue)
    assert _row(mail.id).state == "pending" and _row(mail.id).attempts == 6

    server = SmtpServer(port).start()
    try:
        assert sweep() == 1
        drain(mail_queue)
        assert len(server.inbox.messages) == 1
        row = _row(mail.id)
        assert row.state == "sent" and row.sent_at is not None and row.last_error == ""
        assert sweep() == 0
        drain(mail_queue)
        assert len(server.inbox.messages) == 1
    finally:
        server.stop()


def test_sweep_leaves_queued_jobs_alone(mail_queue):
    mail = _queue()
    _db.session.commit()
    assert sweep() == 1  # counted as handed over, but the queued job is the same one
    assert mail_queue.job_ids == [f"mail-{mail.id}"]


def test_permanent_refusal_fails_the_row_without_retries(mail_queue, smtp_server, use_smtp):
    use_smtp(smtp_server.port, MAIL_RETRY_INTERVALS=[0, 0, 0])
    smtp_server.inbox.rcpt_reply = "550 5.1.1 No such user"
    mail = _queue(cc="")
    _db.session.commit()
    drain(mail_queue)
    row = _row(mail.id)
    assert (row.state, row.attempts) == ("failed", 1)
    assert "refused" in row.last_error
    assert Job.fetch(f"mail-{mail.id}", connection=mail_queue.connection).get_status() == JobStatus.FAILED
    event = _db.session.scalars(select(AuditEvent).where(AuditEvent.action == "mail.failed")).one()
    assert event.outcome == "failed"
    assert sweep() == 0  # a failed mail is not retried by the sweep


def test_4xx_is_transient(app, db, smtp_server, use_smtp):
    use_smtp(smtp_server.port)
    smtp_server.inbox.data_reply = "451 4.3.0 Try again later"
    mail = _queue()
    _db.session.commit()
    with pytest.raises(TransientMailError):
        mail_job.send(mail.id)
    row = _row(mail.id)
    assert row.state == "pending" and "451" in row.last_error
    smtp_server.inbox.data_reply = None
    assert mail_job.send(mail.id) == "sent"
    assert len(smtp_server.inbox.messages) == 1


def test_gives_up_after_the_maximum_attempts(app, db, use_smtp):
    use_smtp(free_port(), MAIL_MAX_ATTEMPTS=2)
    mail = _queue()
    _db.session.commit()
    for _ in range(2):
        with pytest.raises(TransientMailError):
            mail_job.send(mail.id)
    row = _row(mail.id)
    assert (row.state, row.attempts) == ("failed", 2) and "gave up" in row.last_error


def test_unknown_backend_is_a_permanent_error(app, db, monkeypatch):
    monkeypatch.setitem(app.config, "MAIL_BACKEND", "carrier-pigeon")
    mail = _queue()
    _db.session.commit()
    with pytest.raises(PermanentMailError):
        mail_job.send(mail.id)
    assert _row(mail.id).state == "failed"


def test_devmailbox_captures_and_keeps_the_body(app, db):
    assert app.config["MAIL_BACKEND"] == "devmailbox"
    mail = _queue(secret="https://example.test/lab/x")
    _db.session.commit()
    assert mail_job.send(mail.id) == "sent"
    row = _row(mail.id)
    assert row.state == "sent" and "https://example.test/lab/x" in row.text_body
    assert mail_job.send(mail.id) == "sent" and _row(mail.id).attempts == 1
    assert mail_job.send(999_999) == "missing"


def test_outside_development_mail_goes_to_a_loopback_smtp_server_only_when_it_is_allowed(
        app, mail_queue, smtp_server, use_smtp, monkeypatch):
    monkeypatch.setitem(app.config, "DEVELOPMENT", False)
    monkeypatch.setitem(app.config, "OUTBOUND_ALLOWED_HOSTS", "")
    use_smtp(smtp_server.port)
    mail = _queue()
    _db.session.commit()
    with pytest.raises(TransientMailError, match="loopback address"):
        mail_job.send(mail.id)
    assert smtp_server.inbox.messages == [] and _row(mail.id).state == "pending"  # kept for when it is fixed
    assert "OUTBOUND_ALLOWED_HOSTS" in _row(mail.id).last_error
    monkeypatch.setitem(app.config, "OUTBOUND_ALLOWED_HOSTS", "127.0.0.1")
    assert mail_job.send(mail.id) == "sent" and len(smtp_server.inbox.messages) == 1
