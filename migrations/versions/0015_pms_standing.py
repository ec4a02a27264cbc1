"""what the practice management system says of a patient and of a visit

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 19:30:00

`patient.pms_standing`: '' for a current patient, else the PMS's reason the patient is not one
('deceased', 'archived', 'inactive', 'not a patient', 'prospective'). `appointment.not_happening`:
'' for a visit that will happen, else why the PMS says it will not ('broken', 'unscheduled',
'planned', 'a note', 'deleted'). Both are written by portal/integrations/pms.py.
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pms_standing', sa.String(length=20), nullable=False, server_default=''))
    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('not_happening', sa.String(length=20), nullable=False, server_default=''))
    # Visits the PMS had already called off before this column existed.
    op.execute("UPDATE appointment SET not_happening = CASE pms_status WHEN 'Broken' THEN 'broken' "
               "WHEN 'UnschedList' THEN 'unscheduled' WHEN 'Planned' THEN 'planned' "
               "WHEN 'PtNote' THEN 'a note' WHEN 'PtNoteCompleted' THEN 'a note' ELSE '' END")


def downgrade():
    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.drop_column('not_happening')
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_column('pms_standing')
