"""business days stored on cases; organisation managers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:00:00

The reports count turnaround in the database from two stored spans (sent -> dispatched and
sent -> received, in business days). lifecycle.move() keeps them from now on; this fills them in
for the cases already there with the same rule as portal/reports/stats.py business_days_between
(the weekdays after the send up to and including the end day, less the practice's closed days),
written out here so that the migration keeps meaning what it meant when the code moves on.
"""
import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BATCH = 5000


def _business_days(start, end, closed):
    if end < start:
        return None
    days, day = 0, start
    while day < end:
        day += dt.timedelta(days=1)
        if day.weekday() < 5 and day not in closed:
            days += 1
    return days


def _day(value):
    if value is None:
        return None
    if isinstance(value, str):  # SQLite hands back text where the column type is not reflected
        value = dt.datetime.fromisoformat(value)
    return value.date() if isinstance(value, dt.datetime) else value


def _backfill():
    bind = op.get_bind()
    meta = sa.MetaData()
    case = sa.Table('lab_case', meta, sa.Column('id', sa.Integer), sa.Column('practice_id', sa.Integer),
                    sa.Column('sent_at', sa.DateTime), sa.Column('dispatched_at', sa.DateTime),
                    sa.Column('received_at', sa.DateTime), sa.Column('sent_to_dispatched_bdays', sa.Integer),
                    sa.Column('sent_to_received_bdays', sa.Integer))
    closure = sa.Table('practice_closure', meta, sa.Column('practice_id', sa.Integer), sa.Column('day', sa.Date))
    closed = {}
    for practice_id, day in bind.execute(sa.select(closure.c.practice_id, closure.c.day)):
        closed.setdefault(practice_id, set()).add(_day(day))
    update = (case.update().where(case.c.id == sa.bindparam('case_id'))
              .values(sent_to_dispatched_bdays=sa.bindparam('dispatch'),
                      sent_to_received_bdays=sa.bindparam('receive')))
    last = 0
    while True:
        rows = bind.execute(
            sa.select(case.c.id, case.c.practice_id, case.c.sent_at, case.c.dispatched_at, case.c.received_at)
            .where(case.c.id > last, case.c.sent_at.is_not(None),
                   sa.or_(case.c.dispatched_at.is_not(None), case.c.received_at.is_not(None)))
            .order_by(case.c.id).limit(BATCH)).all()
        if not rows:
            return
        params = []
        for case_id, practice_id, sent, dispatched, received in rows:
            sent, days_off = _day(sent), closed.get(practice_id, set())
            params.append({
                'case_id': case_id,
                'dispatch': _business_days(sent, _day(dispatched), days_off) if dispatched else None,
                'receive': _business_days(sent, _day(received), days_off) if received else None,
            })
        bind.execute(update, params)
        last = rows[-1][0]


def upgrade():
    with op.batch_alter_table('lab_case', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sent_to_dispatched_bdays', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sent_to_received_bdays', sa.Integer(), nullable=True))
    _backfill()

    op.create_table('organization_membership',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.Enum('MANAGER', name='organizationrole', native_enum=False, length=20), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_organization_membership_organization_id_organization')),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_organization_membership_user_id_user')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organization_membership')),
    sa.UniqueConstraint('user_id', 'organization_id', name=op.f('uq_organization_membership_user_id'))
    )
    with op.batch_alter_table('organization_membership', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_organization_membership_organization_id'), ['organization_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_organization_membership_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('organization_membership', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_organization_membership_user_id'))
        batch_op.drop_index(batch_op.f('ix_organization_membership_organization_id'))
    op.drop_table('organization_membership')
    with op.batch_alter_table('lab_case', schema=None) as batch_op:
        batch_op.drop_column('sent_to_received_bdays')
        batch_op.drop_column('sent_to_dispatched_bdays')
