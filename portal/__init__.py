"""Lab Manager: track dental lab work from the intraoral scan to the day it is fitted."""
from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from portal.config import ROOT, Config


def create_app(overrides: Mapping | None = None) -> Flask:
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=str(ROOT / "instance"),
    )
    app.config.from_mapping(Config().as_dict())
    if overrides:
        app.config.from_mapping(overrides)

    from portal import models  # noqa: F401  (every model registered before Alembic looks)
    from portal.extensions import csrf, db, htmx, limiter, login_manager, migrate

    if str(app.config["SQLALCHEMY_DATABASE_URI"]).startswith("postgresql+psycopg://"):
        # No server-side prepared statements: psycopg prepares a query after its fifth run and
        # PostgreSQL may then keep a generic plan chosen while the tables were nearly empty. A PMS
        # first sync filling empty tables (bench/pms.py) kept sequential scans that way and slowed
        # down as the tables grew: 64.7 s for 80,000 rows, 39.0 s without preparing (README).
        # And no JIT: the reports' one statement (portal/reports/sql.py) is estimated far above
        # its real size, which crossed jit_above_cost: compiling took 1.3 s of its 1.8 s at
        # 100,000 cases, for a query that runs in 0.5 s interpreted. No statement here gains.
        options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        options["connect_args"] = {"prepare_threshold": None, "options": "-c jit=off",
                                   **(options.get("connect_args") or {})}
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"), render_as_batch=True)
    login_manager.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    htmx.init_app(app)

    from portal import web
    from portal.labcomm import services as labcomm

    web.init_app(app)
    labcomm.register(app)  # how a lab hears of a change: subscribes to the cases', messages' and dispatches' events
    from portal.integrations import writeback

    writeback.register(app)  # the practice's PMS hears of a case sent, received, checked in, or due another day

    from portal.ack.routes import bp as ack_bp
    from portal.admin.routes import bp as admin_bp
    from portal.admin.users.routes import bp as users_bp
    from portal.admin.users.routes import password_bp
    from portal.audit.routes import bp as audit_bp
    from portal.auth.routes import bp as auth_bp
    from portal.board.routes import bp as board_bp
    from portal.cases.routes import bp as cases_bp
    from portal.dispatch.routes import bp as dispatch_bp
    from portal.integrations.hooks import bp as scanner_hooks_bp
    from portal.integrations.routes import bp as scanner_settings_bp
    from portal.labapi.routes import bp as labapi_bp
    from portal.labs.routes import bp as labs_bp
    from portal.mail.routes import bp as mail_bp
    from portal.messages.routes import bp as messages_bp
    from portal.people.routes import bp as people_bp
    from portal.reports.routes import bp as reports_bp
    from portal.scans.routes import bp as scans_bp

    for bp in (auth_bp, board_bp, cases_bp, people_bp, labs_bp, audit_bp, admin_bp, users_bp,
               password_bp, dispatch_bp, labapi_bp, ack_bp, mail_bp, messages_bp, reports_bp, scanner_hooks_bp,
               scans_bp, scanner_settings_bp):
        app.register_blueprint(bp)
    from portal.integrations.itero.routes import bp as scanner_rx_bp

    app.register_blueprint(scanner_rx_bp)
    from portal.integrations.routes import integrations_alias
    from portal.integrations.pms_routes import bp as pms_case_bp

    app.register_blueprint(integrations_alias)  # /admin/integrations: the label's own address
    app.register_blueprint(pms_case_bp)  # a case's lab case in the PMS: Retry

    from portal.scans.upload_routes import bp as uploads_bp
    from portal.scans.upload_routes import files_bp as scan_files_bp

    app.register_blueprint(uploads_bp)  # scan files by upload, and their downloads
    app.register_blueprint(scan_files_bp)

    from portal import cli

    cli.init_app(app)
    return app
