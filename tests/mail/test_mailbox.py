"""The dev mailbox page: only in devmailbox mode, only for signed-in users, HTML shown sandboxed."""
from __future__ import annotations

from portal.extensions import db as _db
from portal.mail.services import queue_mail


def _mail(practice_id, **kw):
    fields = dict(to="lab@lab.test", subject="Work order LC-9", kind="work_order", practice_id=practice_id,
                  text="Open https://portal.test/lab/abc?x=<b>1</b> now",
                  html='<p style="color:red">Hi <script>alert(1)</script><a href="https://portal.test/lab/abc">Open</a></p>')
    fields.update(kw)
    mail = queue_mail(**fields)
    _db.session.commit()
    return mail


def test_mailbox_lists_and_shows_captured_mail(client, login, world):
    mail = _mail(world.practice.id)
    login()
    index = client.get("/dev/mailbox/")
    assert index.status_code == 200
    body = index.get_data(as_text=True)
    assert "Work order LC-9" in body and 'href="/dev/mailbox/"' in body  # nav link in the top bar
    show = client.get(f"/dev/mailbox/{mail.id}").get_data(as_text=True)
    # The text part is escaped, with its links clickable.
    assert '<a href="https://portal.test/lab/abc?x=" rel="noreferrer">' in show
    assert "&lt;b&gt;1&lt;/b&gt;" in show and "<b>1</b>" not in show
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in show
    assert f'src="/dev/mailbox/{mail.id}/html"' in show


def test_html_part_is_served_sandboxed(client, login, world):
    mail = _mail(world.practice.id)
    login()
    response = client.get(f"/dev/mailbox/{mail.id}/html")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox") and "script-src" not in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'self'" in csp and response.headers["X-Frame-Options"] == "SAMEORIGIN"


def test_mailbox_needs_login_and_the_practice(client, login, world):
    mail = _mail(world.practice.id)
    assert client.get("/dev/mailbox/").status_code == 302
    login("outsider")
    assert client.get(f"/dev/mailbox/{mail.id}").status_code == 404
    assert "Work order LC-9" not in client.get("/dev/mailbox/").get_data(as_text=True)


def test_mailbox_is_404_unless_devmailbox(client, login, world, app, monkeypatch):
    mail = _mail(world.practice.id)
    login()
    monkeypatch.setitem(app.config, "MAIL_BACKEND", "smtp")
    for url in ("/dev/mailbox/", f"/dev/mailbox/{mail.id}", f"/dev/mailbox/{mail.id}/html"):
        assert client.get(url).status_code == 404
    assert 'href="/dev/mailbox/"' not in client.get("/").get_data(as_text=True)
