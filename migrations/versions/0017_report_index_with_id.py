"""the reports' covering index carries the case's id on PostgreSQL

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 20:20:00

The figures join each case to its first remake by id, which PostgreSQL's index-only scan can only
take from the index: with the id INCLUDEd a practice's report reads the index alone there too
(SQLite's index has the rowid already; on SQLite this migration changes nothing).
"""
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

COLUMNS = ['practice_id', 'sent_at', 'status', 'lab_id', 'sent_to_dispatched_bdays', 'sent_to_received_bdays',
           'due_date', 'received_at', 'seat_appointment_id', 'fee', 'restorations']


def upgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.drop_index('ix_lab_case_report', table_name='lab_case')
    op.create_index('ix_lab_case_report', 'lab_case', COLUMNS, unique=False, postgresql_include=['id'])


def downgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.drop_index('ix_lab_case_report', table_name='lab_case')
    op.create_index('ix_lab_case_report', 'lab_case', COLUMNS, unique=False)
