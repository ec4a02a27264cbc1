"""M3: the token never appears in a log line (werkzeug's request log, Flask's error log...)."""
from __future__ import annotations

import logging
import secrets
import threading

import httpx
import pytest
from werkzeug.serving import make_server

from portal.logfilter import redact


def _all_messages(caplog) -> list[str]:
    """Everything the server side logged (the test's own HTTP client logs the URLs it calls)."""
    return [record.getMessage() for record in caplog.records
            if not record.name.startswith(("httpx", "httpcore"))]


def test_redact_keeps_the_rest_of_the_line():
    token = secrets.token_urlsafe(32)
    line = f'127.0.0.1 - - "POST /lab/{token}/status HTTP/1.1" 303 -'
    assert redact(line) == '127.0.0.1 - - "POST /lab/[redacted]/status HTTP/1.1" 303 -'
    assert redact("GET /labs/12 HTTP/1.1") == "GET /labs/12 HTTP/1.1"


def test_filters_sit_on_the_loggers_that_print_paths(app, caplog):
    token = secrets.token_urlsafe(32)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("werkzeug").info('%s - - [%s] "%s" %s %s', "127.0.0.1", "now",
                                           f"GET /lab/{token} HTTP/1.1", "200", "-")
        logging.getLogger("gunicorn.access").info("%(r)s %(s)s", {"r": f"GET /lab/{token} HTTP/1.1", "s": "200"})
        app.logger.error("Exception on /lab/%s/status [POST]", token)
    messages = _all_messages(caplog)
    assert len(messages) == 3
    assert all(token not in m and "/lab/[redacted]" in m for m in messages)


@pytest.fixture()
def live(app, db):
    """The app behind werkzeug's real request handler (the one that writes the request log)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


def test_no_token_in_werkzeug_request_log(live, sent, caplog):
    guess = secrets.token_urlsafe(32)
    with caplog.at_level(logging.DEBUG):
        with httpx.Client(base_url=live, timeout=5) as http:
            page = http.get(f"/lab/{sent.token}")
            assert page.status_code == 200
            assert http.post(f"/lab/{sent.token}/status", data={"status": "acknowledged"}).status_code == 400
            assert http.get(f"/lab/{guess}").status_code == 404
    messages = _all_messages(caplog)
    request_lines = [m for m in messages if "HTTP/1.1" in m]
    assert len(request_lines) >= 3, messages
    assert any("/lab/[redacted]" in m for m in request_lines)
    for message in messages:
        assert sent.token not in message and guess not in message
