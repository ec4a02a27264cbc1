"""Request plumbing shared by every blueprint: the current practice, access checks, the
page-or-fragment render helper, security headers and error pages."""
from __future__ import annotations

import datetime as dt
import functools
import json
from urllib.parse import urlsplit

from flask import Flask, abort, flash, g, jsonify, make_response, redirect, render_template, request, session, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from jinja2_fragments.flask import render_block
from sqlalchemy import select
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from portal.auth import sessions
from portal.cases import teeth
from portal.cases.lifecycle import UNDO_SECONDS, allowed_moves
from portal.cases.status import LABELS, Status
from portal.extensions import db, login_manager
from portal.practices.models import Practice, Role, User

HTMX_CONFIG = json.dumps({
    "selfRequestsOnly": True,
    "allowEval": False,
    "allowScriptTags": False,
    "historyCacheSize": 0,
    "refreshOnHistoryMiss": True,
    "includeIndicatorStyles": False,
    "defaultSwapStyle": "innerHTML",
    # 422 carries a form with its errors; other errors are retargeted to the toast area.
    "responseHandling": [
        {"code": "204", "swap": False},
        {"code": "[23]..", "swap": True},
        {"code": "422", "swap": True},
        {"code": "[45]..", "swap": True, "error": True},
    ],
})


def wants_fragment() -> bool:
    return bool(request.htmx) and not request.htmx.boosted and not request.htmx.history_restore_request


def render(template: str, block: str | None = None, *, code: int = 200, **context):
    """The full page, or just `block` of it for an htmx request (one template per page)."""
    if block and wants_fragment():
        body = render_block(template, block, **context)
    else:
        body = render_template(template, **context)
    response = make_response(body, code)
    response.vary.add("HX-Request")
    return response


def safe_next(target: str | None, default: str) -> str:
    """`target` when it is a path on this site, else `default`: the one check for a `next` taken
    from a form or a query string, so a link can never send someone to another host. Refused:
    anything with a scheme or a host, a protocol-relative `//host`, and a backslash anywhere
    (browsers read `/\\host` as `//host`)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def go_to(target: str, code: int = 303):
    """After a change: htmx follows HX-Redirect (a 204 it does not swap), a plain form the redirect."""
    if request.htmx:
        response = make_response("", 204)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, code)


def current_practice() -> Practice:
    return g.practice


def requires(*roles: Role):
    """Login plus one of `roles` in the current practice (admin always passes)."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if g.get("practice") is None:
                abort(403)
            role = current_user.role_in(g.practice.id)
            if role is not Role.ADMIN and role not in roles:
                abort(403)
            return view(*args, **kwargs)

        wrapped.allowed_roles = roles
        return wrapped

    return decorator


ANY_ROLE = (Role.COORDINATOR, Role.MANAGER, Role.ADMIN)
CAN_EDIT = (Role.COORDINATOR, Role.ADMIN)


def can_edit() -> bool:
    if "can_edit" not in g:  # asked once per card on the board: answer it once per request
        g.can_edit = bool(g.get("practice")) and current_user.role_in(g.practice.id) in CAN_EDIT
    return g.can_edit


def case_path(case_id: int, action: str = "") -> str:
    """/cases/<id>[/<action>]: the board builds a few hundred of these, and url_for is slow."""
    return f"{request.script_root}/cases/{case_id}" + (f"/{action}" if action else "")


def get_or_404(model, ident, practice_field: str = "practice_id"):
    """Load a row of the current practice, or 404 (another practice's id is simply not found)."""
    try:
        ident = int(ident)
    except (TypeError, ValueError):
        abort(404)
    obj = db.session.get(model, ident)
    if obj is None or getattr(obj, practice_field) != g.practice.id:
        abort(404)
    return obj


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """The user of the live session whose key the cookie carries (portal/auth/sessions.py)."""
    return sessions.load(user_id)


@login_manager.unauthorized_handler
def unauthorized():
    target = url_for("auth.login", next=request.full_path if request.method == "GET" else None)
    message = sessions.end_message(g.get("session_end_reason", "")) or "Please sign in to continue."
    if request.htmx:
        flash(message, "info")  # shown by the sign-in page htmx is sent to
        response = make_response("", 401)
        response.headers["HX-Redirect"] = target
        return response
    flash(message, "info")
    return redirect(target)


def _load_practice() -> None:
    g.practice = None
    if not current_user.is_authenticated:
        return
    memberships = current_user.memberships
    wanted = session.get("practice_id")
    chosen = next((m for m in memberships if m.practice_id == wanted), None)
    chosen = chosen or (memberships[0] if memberships else None)
    if chosen is not None:
        g.practice = chosen.practice
        g.role = chosen.role
        session["practice_id"] = chosen.practice_id


def _security_headers(response):
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
        "frame-ancestors 'none'"
    )
    response.headers.setdefault("Content-Security-Policy", csp)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Permissions-Policy", "camera=(self), geolocation=(), microphone=()")
    if not _app_is_dev():
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    if request.endpoint != "static" and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "private, no-cache"
    return response


def _app_is_dev() -> bool:
    from flask import current_app

    return current_app.config.get("DEVELOPMENT", False)


def _format_date(value, fmt: str = "%a %d %b") -> str:
    if value is None:
        return "—"
    return value.strftime(fmt)


def _teeth(value, system: str | None = None) -> str:
    system = system or (g.practice.tooth_numbering if g.get("practice") else "fdi")
    return teeth.display(value, system)


def init_app(app: Flask) -> None:
    trusted = int(app.config.get("TRUSTED_PROXIES", 0) or 0)
    if trusted:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=trusted, x_proto=trusted, x_host=trusted)
    app.before_request(_load_practice)
    app.after_request(_security_headers)
    app.jinja_env.filters["date"] = _format_date
    app.jinja_env.filters["teeth"] = _teeth
    app.jinja_env.filters["fromjson"] = lambda text: json.loads(text or "{}")
    app.jinja_env.globals.update(
        Status=Status, STATUS_LABELS=LABELS, HTMX_CONFIG=HTMX_CONFIG, UNDO_SECONDS=UNDO_SECONDS, can_edit=can_edit, Role=Role,
        today=lambda: dt.date.today(), case_moves=allowed_moves, case_path=case_path,
    )

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return _error_page(400, "This form has expired or was not sent from Lab Manager. "
                                "Reload the page and try again.")

    @app.errorhandler(403)
    def forbidden(error):
        return _error_page(403, "Your role in this practice does not allow that.")

    @app.errorhandler(404)
    def not_found(error):
        return _error_page(404, "There is nothing here. It may belong to another practice, or the "
                                "link may be mistyped.")

    @app.errorhandler(429)
    def too_many(error):
        return _error_page(429, "Too many attempts. Wait a minute and try again.")

    @app.errorhandler(500)
    def server_error(error):
        return _error_page(500, "Something went wrong on our side; nothing was changed. Try again.")

    @app.errorhandler(405)
    def not_allowed(error):
        response = _error_page(405, "That action is not available this way.")
        response = make_response(response)
        if getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return response

    @app.errorhandler(HTTPException)
    def any_other(error):
        """Every other HTTP error: JSON under /api/, Werkzeug's own page elsewhere."""
        if is_api():
            return api_error(error.code or 500)
        return error


API_MESSAGES = {
    400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found", 405: "method not allowed",
    413: "the body is too large", 429: "too many requests: wait a minute and try again",
    500: "internal error: nothing was changed",
}


def is_api() -> bool:
    """A machine's request (/api/...): every answer is JSON in the lab API's error shape
    (openapi/lab-api.yaml `Error`), never an HTML page."""
    return request.path.startswith("/api/")


def api_error(status: int):
    response = jsonify(error=API_MESSAGES.get(status, "error"))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(status: int, message: str):
    if is_api():
        return api_error(status)
    if request.htmx:
        response = make_response(render_template("_toast.html", message=message, level="error"), status)
        response.headers["HX-Retarget"] = "#toasts"
        response.headers["HX-Reswap"] = "beforeend"
        return response
    return render_template("error.html", status=status, message=message), status


def practices_for_switcher() -> list[Practice]:
    if not current_user.is_authenticated:
        return []
    ids = [m.practice_id for m in current_user.memberships]
    return list(db.session.scalars(select(Practice).where(Practice.id.in_(ids)).order_by(Practice.name)))
