"""scan source digest: an uploaded export's entries, to know it again before reading it

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 13:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_digest', sa.String(length=64), nullable=False, server_default=''))
        batch_op.create_index(batch_op.f('ix_scan_source_digest'), ['source_digest'], unique=False)


def downgrade():
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scan_source_digest'))
        batch_op.drop_column('source_digest')
