"""scan file jaw note: how sure the shape was, or who set the jaw

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 12:45:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('scan_file', schema=None) as batch_op:
        batch_op.add_column(sa.Column('jaw_note', sa.String(length=200), nullable=False, server_default=''))


def downgrade():
    with op.batch_alter_table('scan_file', schema=None) as batch_op:
        batch_op.drop_column('jaw_note')
