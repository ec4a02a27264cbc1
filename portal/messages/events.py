"""What happens to lab messages that other features may need to hear of."""
from __future__ import annotations

from dataclasses import dataclass

from portal.audit.actor import Actor
from portal.cases.models import LabCase
from portal.messages.models import LabMessage


@dataclass(frozen=True)
class MessageToLab:
    """The practice wrote to the lab from the case page; the message row is stored."""

    case: LabCase
    message: LabMessage
    actor: Actor
