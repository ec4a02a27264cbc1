"""What a person does to cases from the board: a move (a drag, a card's menu, the case page's
buttons), and the same to several selected cards at once. Every move goes through the lifecycle
(portal/cases/lifecycle.py), a send through "Approve and send" (portal/dispatch/services.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from portal.audit.actor import Actor
from portal.cases import services
from portal.cases.lifecycle import IllegalMove
from portal.cases.models import LabCase
from portal.cases.status import Status
from portal.errors import UserError

# Moves a coordinator records on behalf of the lab (what the lab said on the phone).
LAB_SIDE = frozenset({"acknowledged", "in_production", "dispatched", "on_hold", "rescan"})


def person_moves(case: LabCase, to: str, user, reason: str = "") -> Status:
    """Move `case` as `user` asked: a send is Approve and send (the prescription check first, and
    a seat risk needs the send page's confirmation); anything else the lifecycle's move. Raises
    IllegalMove saying why and changes nothing; the caller commits."""
    from portal.dispatch import services as dispatch_services

    on_behalf = f"lab:{case.lab_id}" if case.lab_id and to in LAB_SIDE else ""
    actor = Actor.user(user, on_behalf_of=on_behalf)
    target = services.status_of(to, case)
    if services.is_send(case, target):
        dispatch_services.approve_and_send(case, actor, confirm_risk=False)
    else:
        services.move_case(case, target, actor, reason=reason)
    return target


@dataclass
class BulkResult:
    done: list[LabCase] = field(default_factory=list)
    unchanged: list[LabCase] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # case id -> why, for the person

    def summary(self, verb: str) -> str:
        """`verb` says what happened to the cases done: "moved to Acknowledged"."""
        parts = []
        if self.done:
            parts.append(f"{_cases(len(self.done))} {verb}.")
        if self.unchanged:
            parts.append(f"{_cases(len(self.unchanged))} already so.")
        if self.refused:
            parts.append(f"Not changed ({len(self.refused)}): " + " ".join(self.refused.values()))
        return " ".join(parts) or "Nothing changed."


def _cases(n: int) -> str:
    return "1 case" if n == 1 else f"{n} cases"


def bulk(cases: list[LabCase], action: str, user, *, lab_id: int | None = None, status: str = "",
         reason: str = "") -> BulkResult:
    """Apply one action to each of `cases`: assign_lab (lab_id), move (status, with a reason
    where the move needs one) or cancel (reason). Each case goes through the same path as one
    card would, with its own audit row; a case the action does not fit is refused with the
    reason and left as it was (every check runs before anything is written), the others go
    ahead. The caller commits."""
    result = BulkResult()
    for case in cases:
        try:
            if action == "assign_lab":
                changed = services.assign_lab(case, lab_id, Actor.user(user))
            elif action in ("move", "cancel"):
                target = Status.CANCELLED.value if action == "cancel" else status
                changed = case.status.value != target
                if changed:
                    person_moves(case, target, user, reason)
            else:
                raise ValueError(action)
        except (IllegalMove, UserError) as exc:
            result.refused[case.id] = str(exc) if case.number in str(exc) else f"{case.number}: {exc}"
            continue
        (result.done if changed else result.unchanged).append(case)
    return result
