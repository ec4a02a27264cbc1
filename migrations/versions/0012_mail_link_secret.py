"""mail link secret: the outbox keeps a private link's token only encrypted, and drops it once delivered

mail_message.scrub (the token in clear, removed from the bodies after an SMTP delivery) becomes
link_secret (the token encrypted with SCANNER_CREDENTIALS_KEYS; the bodies hold a placeholder in
its place). Rows still waiting to be sent, and those the dev mailbox captured, keep their link
this way; the downgrade puts the tokens back into the bodies and the scrub column.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 12:58:17.066311

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

PLACEHOLDER = "[[lab-manager:private-link]]"  # portal/mail/models.py, as it was when written
_mail = sa.table("mail_message", sa.column("id", sa.Integer), sa.column("text_body", sa.Text),
                 sa.column("html_body", sa.Text), sa.column("scrub", sa.String), sa.column("link_secret", sa.String))


def upgrade():
    from portal import keyring

    with op.batch_alter_table('mail_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('link_secret', sa.String(length=500), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.select(_mail.c.id, _mail.c.text_body, _mail.c.html_body, _mail.c.scrub)
                        .where(_mail.c.scrub != "")).all()
    for row in rows:
        bind.execute(sa.update(_mail).where(_mail.c.id == row.id).values(
            text_body=row.text_body.replace(row.scrub, PLACEHOLDER),
            html_body=(row.html_body or "").replace(row.scrub, PLACEHOLDER),
            link_secret=keyring.encrypt_text(row.scrub)))
    with op.batch_alter_table('mail_message', schema=None) as batch_op:
        batch_op.drop_column('scrub')


def downgrade():
    from portal import keyring

    with op.batch_alter_table('mail_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scrub', sa.VARCHAR(length=200), nullable=False, server_default=""))
    bind = op.get_bind()
    rows = bind.execute(sa.select(_mail.c.id, _mail.c.text_body, _mail.c.html_body, _mail.c.link_secret)
                        .where(_mail.c.link_secret.is_not(None))).all()
    for row in rows:
        token = keyring.decrypt_text(row.link_secret)
        bind.execute(sa.update(_mail).where(_mail.c.id == row.id).values(
            text_body=row.text_body.replace(PLACEHOLDER, token),
            html_body=(row.html_body or "").replace(PLACEHOLDER, token), scrub=token))
    with op.batch_alter_table('mail_message', schema=None) as batch_op:
        batch_op.drop_column('link_secret')
