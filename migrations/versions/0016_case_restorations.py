"""a case's services stored on it for the reports

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 19:45:00

lab_case.restorations holds the distinct restoration codes of the case's items as a sorted JSON
array (portal/cases/models.py keeps it on every flush that touches an item), so the reports count a
case under each of its services without joining case_item. It joins the reports' covering index.
Existing cases get theirs from their items here.
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

OLD = ['practice_id', 'sent_at', 'status', 'lab_id', 'sent_to_dispatched_bdays', 'sent_to_received_bdays',
       'due_date', 'received_at', 'seat_appointment_id', 'fee']

FILL = {
    "postgresql": """UPDATE lab_case SET restorations = found.codes FROM (
        SELECT case_id, json_agg(restoration ORDER BY restoration)::text AS codes
        FROM (SELECT DISTINCT case_id, restoration FROM case_item) AS item GROUP BY case_id) AS found
        WHERE found.case_id = lab_case.id""",
    "sqlite": """UPDATE lab_case SET restorations = (
        SELECT json_group_array(restoration) FROM (
            SELECT DISTINCT restoration FROM case_item WHERE case_item.case_id = lab_case.id ORDER BY restoration))
        WHERE EXISTS (SELECT 1 FROM case_item WHERE case_item.case_id = lab_case.id)""",
}


def upgrade():
    with op.batch_alter_table('lab_case', schema=None) as batch_op:
        batch_op.add_column(sa.Column('restorations', sa.String(length=400), server_default='[]', nullable=False))
        batch_op.drop_index('ix_lab_case_report')
        batch_op.create_index('ix_lab_case_report', [*OLD, 'restorations'], unique=False)
    op.execute(FILL[op.get_bind().dialect.name])


def downgrade():
    with op.batch_alter_table('lab_case', schema=None) as batch_op:
        batch_op.drop_index('ix_lab_case_report')
        batch_op.create_index('ix_lab_case_report', OLD, unique=False)
        batch_op.drop_column('restorations')
