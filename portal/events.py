"""Domain events: a feature says what happened; the features that care subscribe at app creation.

A service publishes an event (a small frozen dataclass of its own package, e.g.
``portal.cases.events.CaseCancelled``) at the point where the change is made. Subscribers run at
once, in the publisher's transaction, in the order they subscribed: whatever they write (an
audit row, an outbox row such as a mail or an order event) commits or rolls back with the change
itself, and the outbox relay (portal/queue.py) hands their jobs to RQ only after the commit. An
exception in a subscriber propagates to the publisher's caller, which rolls back the whole change.

So the case and message services need not know who hears of a change: ``portal.labcomm``
subscribes and decides how the lab hears (email, its API, or the coordinator's phone call).
Subscriptions live on the app (``app.extensions``), made once in ``create_app``; this module
imports nothing of the portal.
"""
from __future__ import annotations

from collections.abc import Callable

from flask import Flask, current_app

_KEY = "portal.events"


def subscribe(app: Flask, event_type: type, handler: Callable[[object], None]) -> None:
    """Call ``handler(event)`` whenever an event of ``event_type`` is published in ``app``."""
    app.extensions.setdefault(_KEY, {}).setdefault(event_type, []).append(handler)


def subscribers(event_type: type, app: Flask | None = None) -> list[Callable[[object], None]]:
    registry = (app or current_app).extensions.get(_KEY, {})
    return list(registry.get(event_type, ()))


def publish(event: object) -> None:
    """Run every subscriber of the event's type, now, in the caller's transaction."""
    for handler in subscribers(type(event)):
        handler(event)
