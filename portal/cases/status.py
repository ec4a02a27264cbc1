"""A lab case's statuses, their labels and phases. Imports nothing of the portal, so every module
(models, the lifecycle, risk, the board, jobs) can use it without importing each other."""
from __future__ import annotations

import enum


class Status(enum.StrEnum):
    DRAFT = "draft"
    SENT = "sent"
    ACKNOWLEDGED = "acknowledged"
    IN_PRODUCTION = "in_production"
    DISPATCHED = "dispatched"
    RECEIVED = "received"
    FITTED = "fitted"
    ON_HOLD = "on_hold"
    RESCAN = "rescan"
    CANCELLED = "cancelled"

    @property
    def label(self) -> str:
        return LABELS[self]

    @property
    def phase(self) -> str:
        return PHASE[self]

    @classmethod
    def awaiting_lab(cls) -> frozenset[Status]:
        """Statuses in which the work is at the lab and can be late."""
        return frozenset({cls.SENT, cls.ACKNOWLEDGED, cls.IN_PRODUCTION, cls.ON_HOLD})

    @classmethod
    def open(cls) -> frozenset[Status]:
        return frozenset(cls) - {cls.FITTED, cls.CANCELLED}


LABELS = {
    Status.DRAFT: "Draft",
    Status.SENT: "Sent",
    Status.ACKNOWLEDGED: "Acknowledged",
    Status.IN_PRODUCTION: "In production",
    Status.DISPATCHED: "Dispatched",
    Status.RECEIVED: "Received",
    Status.FITTED: "Fitted",
    Status.ON_HOLD: "On hold",
    Status.RESCAN: "Returned for rescan",
    Status.CANCELLED: "Cancelled",
}

# The coarse lifecycle every case follows (docs/sources.md source 000): request -> in progress -> delivery -> fit.
PHASE = {
    Status.DRAFT: "request",
    Status.SENT: "request",
    Status.ACKNOWLEDGED: "in progress",
    Status.IN_PRODUCTION: "in progress",
    Status.ON_HOLD: "in progress",
    Status.RESCAN: "request",
    Status.DISPATCHED: "delivery",
    Status.RECEIVED: "delivery",
    Status.FITTED: "fit",
    Status.CANCELLED: "closed",
}

# The main line, in order. A lab may skip ahead (dispatch without acknowledging first).
MAIN_LINE = [
    Status.DRAFT, Status.SENT, Status.ACKNOWLEDGED, Status.IN_PRODUCTION,
    Status.DISPATCHED, Status.RECEIVED, Status.FITTED,
]
