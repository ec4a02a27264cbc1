from __future__ import annotations


from flask import Blueprint, current_app, flash, redirect, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from portal.audit.actor import Actor
from portal.audit.service import record
from portal.auth.forms import LoginForm
from portal.auth.services import authenticate
from portal.extensions import db, limiter
from portal.web import render, safe_next

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("board.index"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        user = authenticate(form.email.data, form.password.data)
        db.session.commit()
        if user is not None:
            session.clear()
            login_user(user)
            return redirect(safe_next(request.args.get("next"), url_for("board.index")))
        form.password.errors.append("That email and password do not match an active account.")
        status = 422
    elif request.method == "POST":
        status = 422
    return render("auth/login.html", form=form, code=status)


@bp.post("/logout")
@login_required
def logout():
    record("auth.logout", "user", current_user.id, actor=Actor.user(current_user))
    db.session.commit()
    logout_user()
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.post("/practice")
@login_required
def switch_practice():
    wanted = request.form.get("practice_id", type=int)
    if current_user.role_in(wanted) is None:
        flash("You are not a member of that practice.", "error")
    else:
        session["practice_id"] = wanted
    return redirect(url_for("board.index"))
