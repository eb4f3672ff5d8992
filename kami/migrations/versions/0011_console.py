"""accounts: TOTP two-factor secrets (sealed) and admin console sessions (hashed ids)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 00:20:00
"""
from alembic import op
import sqlalchemy as sa
import kami.kernel.db


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts_totp',
    sa.Column('admin_id', sa.Integer(), nullable=False),
    sa.Column('sealed', sa.LargeBinary(length=128), nullable=False),
    sa.Column('confirmed_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_step', sa.Integer(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['admin_id'], ['accounts_admin.id'], name=op.f('fk_accounts_totp_admin_id_accounts_admin')),
    sa.PrimaryKeyConstraint('admin_id', name=op.f('pk_accounts_totp'))
    )
    op.create_table('accounts_console_session',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('admin_id', sa.Integer(), nullable=False),
    sa.Column('session_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['admin_id'], ['accounts_admin.id'], name=op.f('fk_accounts_console_session_admin_id_accounts_admin')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts_console_session')),
    sa.UniqueConstraint('session_hash', name=op.f('uq_accounts_console_session_session_hash'))
    )
    with op.batch_alter_table('accounts_console_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_accounts_console_session_admin_id'), ['admin_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('accounts_console_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_console_session_admin_id'))
    op.drop_table('accounts_console_session')
    op.drop_table('accounts_totp')
