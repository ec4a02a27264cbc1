"""RQ jobs. Each takes ids, builds (or reuses) the app, and re-reads the database.

`app()` reuses the application of an already pushed app context (an in-process test worker) and
otherwise builds one per process with `create_app()` from the environment, once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flask import Flask, current_app, has_app_context

_app: Flask | None = None


def app() -> Flask:
    global _app
    if has_app_context():
        return current_app._get_current_object()
    if _app is None:
        from portal import create_app

        _app = create_app()
    return _app


def each_in_its_own_transaction(ids: Iterable, apply: Callable[[object], str], what: str) -> list[str]:
    """Apply `apply` to each id and commit it alone, in order (a lab's events, a vendor's
    notifications). One that raises is rolled back and logged and stays as it was; the others go
    on; then the job fails in RQ naming them, so the error is seen and the sweep tries them again."""
    from portal.extensions import db

    outcomes, failed = [], []
    for row_id in ids:
        try:
            outcomes.append(apply(row_id))
            db.session.commit()
        except Exception:
            db.session.rollback()
            logging.getLogger(__name__).exception("%s %s could not be applied; it stays pending", what, row_id)
            failed.append(row_id)
    if failed:
        raise RuntimeError(f"{what} {failed} could not be applied; they stay pending")
    return outcomes
