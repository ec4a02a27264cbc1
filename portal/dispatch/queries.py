"""What other features read about a case's work orders (read-only)."""
from __future__ import annotations

from dataclasses import dataclass

from portal.cases.models import LabCase
from portal.dispatch import notices, services
from portal.dispatch.models import Dispatch, DispatchState, OrderNotice
from portal.labs.models import Channel


@dataclass(frozen=True)
class DispatchPanel:
    """The case page's "Sending to the lab": the newest dispatch, and for an API lab the order
    events sent since (oldest first)."""

    dispatch: Dispatch | None
    updates: list[OrderNotice]

    @property
    def shown(self) -> bool:
        return self.dispatch is not None and self.dispatch.state is not DispatchState.SUPERSEDED


def dispatch_panel(case: LabCase) -> DispatchPanel:
    dispatch = services.latest_dispatch(case.id)
    updates = []
    if dispatch is not None and dispatch.state is not DispatchState.SUPERSEDED and dispatch.channel is Channel.API:
        updates = notices.notices_of(dispatch.id)
    return DispatchPanel(dispatch, updates)


def api_order(case: LabCase) -> Dispatch | None:
    """The case's live order at an API lab, or None (another channel, or never sent)."""
    if case.lab is None or case.lab.channel is not Channel.API:
        return None
    return notices.current_order(case)
