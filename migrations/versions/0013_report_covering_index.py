"""the reports' covering index

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 12:55:00

The managers' reports read a practice's cases by send date and only these columns: with all of
them in the index the report scans the index alone (bench/reports.py). It starts with the index
it replaces (practice_id, sent_at), so every query that used that one can use this one.
"""
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

COLUMNS = ['practice_id', 'sent_at', 'status', 'lab_id', 'sent_to_dispatched_bdays', 'sent_to_received_bdays',
           'due_date', 'received_at', 'seat_appointment_id', 'fee']


def upgrade():
    with op.batch_alter_table('lab_case', schema=None) as batch_op:
        batch_op.drop_index('ix_lab_case_practice_sent')
        batch_op.create_index('ix_lab_case_report', COLUMNS, unique=False)


def downgrade():
    with op.batch_alter_table('lab_case', schema=None) as batch_op:
        batch_op.drop_index('ix_lab_case_report')
        batch_op.create_index('ix_lab_case_practice_sent', ['practice_id', 'sent_at'], unique=False)
