"""Random sequences of legal and illegal moves by the practice and the lab over several cases.

The machine keeps its own belief of each case's status (worked out from the product rules, not
from portal.cases.lifecycle) and checks after every step that the database agrees, that a
successful move wrote exactly one audit row and a refused one none, and that the chain verifies.
"""
from __future__ import annotations

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from portal.audit.actor import Actor
from portal.audit.models import AuditEvent
from portal.audit.record import verify_chain
from portal.cases import lifecycle, services
from portal.cases.lifecycle import IllegalMove, Status
from portal.cases.models import LabCase
from portal.extensions import db
from tests import factories
from tests.conftest import _truncate_all

S = Status
LINE = [S.DRAFT, S.SENT, S.ACKNOWLEDGED, S.IN_PRODUCTION, S.DISPATCHED, S.RECEIVED, S.FITTED]
AT_LAB = [S.SENT, S.ACKNOWLEDGED, S.IN_PRODUCTION]
PRACTICE_ONLY = {(S.DRAFT, S.SENT), (S.DISPATCHED, S.RECEIVED), (S.RECEIVED, S.FITTED),
                 (S.RESCAN, S.DRAFT), (S.RESCAN, S.SENT)}
RETURNED = (S.DISPATCHED, S.RECEIVED, S.FITTED)
REASONS = ["", "   ", "the shade photo is missing"]


def expected_legal(status: Status, held_from: Status | None, to: Status, side: str, reason: str) -> bool:
    """The product's rules, written independently of the module under test."""
    if to is status:
        return False
    if to in (S.ON_HOLD, S.RESCAN, S.CANCELLED) and not reason.strip():
        return False
    if side == "lab" and (to is S.CANCELLED or (status, to) in PRACTICE_ONLY):
        return False
    if status is S.DRAFT:
        return to in (S.SENT, S.CANCELLED)
    if status in AT_LAB:
        forward = LINE[LINE.index(status) + 1:LINE.index(S.DISPATCHED) + 1]
        return to in forward or to in (S.ON_HOLD, S.RESCAN, S.CANCELLED)
    if status is S.DISPATCHED:
        return to in (S.RECEIVED, S.CANCELLED)
    if status is S.RECEIVED:
        return to is S.FITTED
    if status is S.ON_HOLD:
        held = held_from or S.SENT
        resumable = LINE[LINE.index(held):LINE.index(S.DISPATCHED) + 1]
        return to in resumable or to in (S.RESCAN, S.CANCELLED)
    if status is S.RESCAN:
        return to in (S.DRAFT, S.SENT, S.CANCELLED)
    return False  # fitted, cancelled


class CaseMachine(RuleBasedStateMachine):
    cases = Bundle("cases")

    def __init__(self):
        super().__init__()
        _truncate_all()
        self.world = factories.world()
        self.status: dict[int, Status] = {}
        self.held_from: dict[int, Status | None] = {}
        self.rows = self._audit_rows()
        self.practice = Actor.user(self.world.users["coordinator"])
        self.lab = Actor.lab(self.world.lab)

    @staticmethod
    def _audit_rows() -> int:
        return db.session.scalar(select(func.count()).select_from(AuditEvent))

    def _actor(self, side: str) -> Actor:
        return self.lab if side == "lab" else self.practice

    @initialize(target=cases, starts=st.lists(st.sampled_from(list(Status)), min_size=3, max_size=3))
    def make_cases(self, starts):
        ids = []
        for start in starts:
            case = factories.case(self.world, start)
            self.status[case.id] = start
            self.held_from[case.id] = S.SENT if start is S.ON_HOLD else None
            ids.append(case.id)
        self.rows = self._audit_rows()
        return multiple(*ids)

    @rule(case_id=cases, aim=st.sampled_from(["legal", "legal", "any"]), data=st.data())
    def move(self, case_id, aim, data):
        case = db.session.get(LabCase, case_id)
        current, held = self.status[case_id], self.held_from[case_id]
        options = [(to, side, reason) for to in Status for side in ("practice", "lab") for reason in REASONS]
        if aim == "legal":  # random picks are mostly refusals; aim for a legal move two times in three
            options = [o for o in options if expected_legal(current, held, *o)] or options
        to, side, reason = data.draw(st.sampled_from(options))
        legal = expected_legal(current, held, to, side, reason)
        event("legal move" if legal else "illegal move")
        try:
            lifecycle.move(case, to, actor=self._actor(side), reason=reason)
        except IllegalMove as exc:
            db.session.rollback()
            assert not legal, f"{current} -> {to} by {side} ({reason!r}) was refused: {exc}"
            assert self._audit_rows() == self.rows, "a refused move wrote an audit row"
            return
        db.session.commit()
        assert legal, f"{current} -> {to} by {side} ({reason!r}) was allowed"
        self.rows += 1
        assert self._audit_rows() == self.rows, "a move must write exactly one audit row"
        self.held_from[case_id] = current if to is S.ON_HOLD else None
        self.status[case_id] = to

    @precondition(lambda self: len(self.status) < 6 and any(s in RETURNED for s in self.status.values()))
    @rule(target=cases, data=st.data(), payer=st.sampled_from(["lab", "practice"]))
    def remake(self, data, payer):
        """Remakes of returned work only: refused remakes are covered by test_lifecycle.py."""
        case_id = data.draw(st.sampled_from(sorted(i for i, s in self.status.items() if s in RETURNED)))
        case = db.session.get(LabCase, case_id)
        new = services.remake(case, self.practice, "fit", payer, "rocks on the model")
        db.session.commit()
        self.rows += 2  # case.remake on the new case, case.remade on the original
        assert self._audit_rows() == self.rows
        assert self.status[case_id] in RETURNED and case.status is self.status[case_id]
        self.status[new.id], self.held_from[new.id] = S.DRAFT, None
        return new.id

    @invariant()
    def one_status_per_case_and_it_is_the_believed_one(self):
        if not self.status:
            return
        rows = db.session.execute(select(LabCase.id, LabCase.status, LabCase.held_from)).all()
        assert {r.id: r.status for r in rows} == self.status
        for r in rows:
            if r.status is S.ON_HOLD:
                assert r.held_from == self.held_from[r.id]

    @invariant()
    def the_chain_verifies(self):
        assert list(verify_chain()) == []


def test_random_moves_keep_status_audit_and_chain_consistent(db):
    run_state_machine_as_test(CaseMachine, settings=settings(
        max_examples=25, stateful_step_count=20, deadline=None, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    ))
