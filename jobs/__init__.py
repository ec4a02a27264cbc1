"""RQ jobs. Each takes ids, builds (or reuses) the app, and re-reads the database.

`app()` reuses the application of an already pushed app context (an in-process test worker) and
otherwise builds one per process with `create_app()` from the environment, once.
"""
from __future__ import annotations

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
