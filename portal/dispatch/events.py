"""What happens to a work order (a dispatch) that the rest of lab communication follows."""
from __future__ import annotations

from dataclasses import dataclass

from portal.audit.actor import Actor
from portal.dispatch.models import Dispatch


@dataclass(frozen=True)
class WorkOrderApproved:
    """"Approve and send" wrote the dispatch and moved the case to Sent; the work order must now
    travel to the lab by its channel (portal.labcomm decides how)."""

    dispatch: Dispatch
    actor: Actor


@dataclass(frozen=True)
class WorkOrderSuperseded:
    """The case is being sent again: this older dispatch no longer carries the case."""

    dispatch: Dispatch
    actor: Actor | None


@dataclass(frozen=True)
class WorkOrderDelivered:
    """The lab's API accepted the work order (its reply, or an event that shows it has it)."""

    dispatch_id: str
