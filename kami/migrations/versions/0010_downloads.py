"""delivery: files sold as downloads (delivery_file), their items (delivery_download) and
every counted download (delivery_download_event)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 23:58:28.697532
"""
from alembic import op
import sqlalchemy as sa
import kami.kernel.db


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('delivery_download',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('link_minutes', sa.Integer(), nullable=False),
    sa.Column('max_downloads', sa.Integer(), nullable=False),
    sa.Column('downloads', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_download')),
    sa.UniqueConstraint('order_id', 'position', name=op.f('uq_delivery_download_order_id_position')),
    sa.UniqueConstraint('token', name=op.f('uq_delivery_download_token'))
    )
    with op.batch_alter_table('delivery_download', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_download_file_id'), ['file_id'], unique=False)

    op.create_table('delivery_download_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('download_id', sa.Integer(), nullable=False),
    sa.Column('at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=512), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_download_event'))
    )
    with op.batch_alter_table('delivery_download_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_download_event_download_id'), ['download_id'], unique=False)

    op.create_table('delivery_file',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('content_type', sa.String(length=127), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=True),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_file')),
    sa.UniqueConstraint('public_id', name=op.f('uq_delivery_file_public_id'))
    )
    with op.batch_alter_table('delivery_file', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_file_sha256'), ['sha256'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('delivery_file', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_file_sha256'))

    op.drop_table('delivery_file')
    with op.batch_alter_table('delivery_download_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_download_event_download_id'))

    op.drop_table('delivery_download_event')
    with op.batch_alter_table('delivery_download', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_download_file_id'))

    op.drop_table('delivery_download')
