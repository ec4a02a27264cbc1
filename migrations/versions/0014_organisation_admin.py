"""organisation admins beside organisation managers

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 14:00:00

A user may hold more than one role over an organisation (manager: the DSO view; admin: a lab's API
address and signing secrets), so a membership is unique per user, organisation and role.
"""
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('organization_membership', schema=None) as batch_op:
        batch_op.drop_constraint('uq_organization_membership_user_id', type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_organization_membership_user_id'),
                                          ['user_id', 'organization_id', 'role'])


def downgrade():
    with op.batch_alter_table('organization_membership', schema=None) as batch_op:
        batch_op.drop_constraint('uq_organization_membership_user_id', type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_organization_membership_user_id'),
                                          ['user_id', 'organization_id'])
