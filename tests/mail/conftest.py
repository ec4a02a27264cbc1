"""A real SMTP server on loopback (aiosmtpd), an isolated RQ queue, and SMTP settings for the app."""
from __future__ import annotations

import uuid
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller

from portal.queue import get_queue
from tests.jobs import drain as _drain
from tests.jobs import free_port  # noqa: F401  (imported by the tests from here)


class Inbox:
    """aiosmtpd handler: keeps what it is given; can refuse recipients or data with a code."""

    def __init__(self):
        self.messages = []
        self.rcpt_reply = None  # e.g. "550 5.1.1 no such user"
        self.data_reply = None  # e.g. "451 4.3.0 try later"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              message_from_bytes(envelope.content, policy=policy.default)))
        return "250 Message accepted"


class SmtpServer:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.inbox = Inbox()
        self.controller = None

    def start(self) -> SmtpServer:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, ready_timeout=10)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture()
def smtp_server():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture()
def mail_queue(app, db, monkeypatch):
    """A queue of our own, so no other test's jobs run here (and ours run nowhere else)."""
    monkeypatch.setitem(app.config, "RQ_QUEUE", f"mailtest-{uuid.uuid4().hex[:8]}")
    queue = get_queue()
    # Job ids are global in Redis and the database restarts its ids for every test: a "mail-1"
    # left queued by an earlier test would make ours look already enqueued.
    for key in queue.connection.scan_iter(match="rq:job:mail-*", count=500):
        queue.connection.delete(key)
    yield queue
    queue.empty()
    for registry in (queue.scheduled_job_registry, queue.failed_job_registry, queue.finished_job_registry):
        for job_id in registry.get_job_ids():
            registry.remove(job_id, delete_job=True)


@pytest.fixture()
def use_smtp(app, monkeypatch):
    """Point the app at an SMTP port; returns a setter so a test can pick the port."""

    def _use(port: int, **extra):
        monkeypatch.setitem(app.config, "MAIL_BACKEND", "smtp")
        monkeypatch.setitem(app.config, "SMTP_HOST", "127.0.0.1")
        monkeypatch.setitem(app.config, "SMTP_PORT", port)
        monkeypatch.setitem(app.config, "SMTP_TIMEOUT", 3.0)
        monkeypatch.setitem(app.config, "SMTP_STARTTLS", False)
        monkeypatch.setitem(app.config, "SMTP_USERNAME", "")
        for key, value in extra.items():
            monkeypatch.setitem(app.config, key, value)

    return _use


def drain(queue, timeout: float = 20.0) -> None:
    """Run the queue's jobs in this process (retries without a delay included) until it is empty."""
    _drain(queue, timeout, wait_for_scheduled=False)
