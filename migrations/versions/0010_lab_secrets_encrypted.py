"""lab secrets encrypted: lab_secret.secret holds a Fernet token (SCANNER_CREDENTIALS_KEYS), not the whsec_ text

Every existing secret is encrypted in place with the ring's first key, so no signing secret stays
readable in the database; the column widens to hold the token. Upgrading a database that holds lab
secrets needs SCANNER_CREDENTIALS_KEYS set (the migration says so and changes nothing otherwise).
The downgrade writes them back in clear.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 12:34:36.848411

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_secrets = sa.table("lab_secret", sa.column("id", sa.Integer), sa.column("secret", sa.String))


def _rewrite(change) -> None:
    bind = op.get_bind()
    for row in bind.execute(sa.select(_secrets.c.id, _secrets.c.secret)).all():
        new = change(row.secret)
        if new != row.secret:
            bind.execute(sa.update(_secrets).where(_secrets.c.id == row.id).values(secret=new))


def upgrade():
    from portal import keyring

    with op.batch_alter_table('lab_secret', schema=None) as batch_op:
        batch_op.alter_column('secret', existing_type=sa.VARCHAR(length=200), type_=sa.String(length=500),
                              existing_nullable=False)
    _rewrite(lambda value: value if value.startswith(keyring.FERNET_PREFIX) else keyring.encrypt_text(value))


def downgrade():
    from portal import keyring

    _rewrite(lambda value: keyring.decrypt_text(value) if value.startswith(keyring.FERNET_PREFIX) else value)
    with op.batch_alter_table('lab_secret', schema=None) as batch_op:
        batch_op.alter_column('secret', existing_type=sa.String(length=500), type_=sa.VARCHAR(length=200),
                              existing_nullable=False)
