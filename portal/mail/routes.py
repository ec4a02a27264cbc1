"""The dev mailbox: mail captured when MAIL_BACKEND is "devmailbox" (404 otherwise)."""
from __future__ import annotations

import re

from flask import Blueprint, abort, current_app, g, make_response, render_template
from markupsafe import Markup, escape
from sqlalchemy import select

from portal.extensions import db
from portal.mail.models import MailMessage
from portal.web import ANY_ROLE, render, requires

bp = Blueprint("mail", __name__, url_prefix="/dev/mailbox")
URL = re.compile(r"https?://[^\s<>\"']+")


@bp.before_request
def _only_in_devmailbox_mode():
    if current_app.config.get("MAIL_BACKEND") != "devmailbox":
        abort(404)


def _mail_or_404(mail_id: int) -> MailMessage:
    mail = db.session.get(MailMessage, mail_id)
    if mail is None or mail.practice_id not in (None, g.practice.id):
        abort(404)
    return mail


def linkify(text: str) -> Markup:
    """Escaped text with its http(s) URLs as links."""
    out, last = [], 0
    for match in URL.finditer(text or ""):
        out.append(escape(text[last:match.start()]))
        url = match.group(0)
        out.append(Markup('<a href="{0}" rel="noreferrer">{0}</a>').format(url))
        last = match.end()
    out.append(escape((text or "")[last:]))
    return Markup("").join(out)


@bp.get("/")
@requires(*ANY_ROLE)
def index():
    mails = db.session.scalars(
        select(MailMessage).where(MailMessage.practice_id == g.practice.id)
        .order_by(MailMessage.id.desc()).limit(200)
    ).all()
    return render("mail/index.html", mails=mails)


@bp.get("/<int:mail_id>")
@requires(*ANY_ROLE)
def show(mail_id: int):
    mail = _mail_or_404(mail_id)
    return render("mail/show.html", mail=mail, text_html=linkify(mail.text_body))


@bp.get("/<int:mail_id>/html")
@requires(*ANY_ROLE)
def html(mail_id: int):
    """The HTML part on its own, for the sandboxed iframe: no scripts, no plugins, no forms,
    and no requests anywhere (inline styles and data: images only)."""
    mail = _mail_or_404(mail_id)
    response = make_response(mail.html_body or render_template("mail/_no_html.html"))
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    response.headers["Content-Security-Policy"] = (
        "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
