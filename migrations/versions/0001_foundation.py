"""Foundation: frames, the files they were seen as, and their history.

Revision ID: 0001
Revises: 
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('frames',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=True),
    sa.Column('hdu_index', sa.Integer(), nullable=True),
    sa.Column('imagetyp', sa.String(length=16), nullable=False),
    sa.Column('type_source', sa.Text(), nullable=True),
    sa.Column('exptime', sa.Float(), nullable=True),
    sa.Column('filter', sa.String(length=80), nullable=True),
    sa.Column('object', sa.String(length=80), nullable=True),
    sa.Column('date_obs', sa.DateTime(), nullable=True),
    sa.Column('night', sa.String(length=10), nullable=True),
    sa.Column('xbin', sa.Integer(), nullable=True),
    sa.Column('ybin', sa.Integer(), nullable=True),
    sa.Column('naxis1', sa.Integer(), nullable=True),
    sa.Column('naxis2', sa.Integer(), nullable=True),
    sa.Column('ccd_temp', sa.Float(), nullable=True),
    sa.Column('set_temp', sa.Float(), nullable=True),
    sa.Column('gain', sa.Float(), nullable=True),
    sa.Column('egain', sa.Float(), nullable=True),
    sa.Column('offset', sa.Float(), nullable=True),
    sa.Column('readout_mode', sa.String(length=80), nullable=True),
    sa.Column('instrument', sa.String(length=80), nullable=True),
    sa.Column('telescope', sa.String(length=80), nullable=True),
    sa.Column('ra_deg', sa.Float(), nullable=True),
    sa.Column('dec_deg', sa.Float(), nullable=True),
    sa.Column('camera_key', sa.String(length=255), nullable=True),
    sa.Column('header', sa.JSON(), nullable=True),
    sa.Column('header_warnings', sa.JSON(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_reason', sa.Text(), nullable=True),
    sa.Column('tries', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_frames')),
    sa.UniqueConstraint('sha256', name=op.f('uq_frames_sha256'))
    )
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_frames_camera_key'), ['camera_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_date_obs'), ['date_obs'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_filter'), ['filter'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_imagetyp'), ['imagetyp'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_night'), ['night'], unique=False)
        batch_op.create_index('ix_frames_night_imagetyp_filter', ['night', 'imagetyp', 'filter'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_object'), ['object'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_path'), ['path'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_state'), ['state'], unique=False)

    op.create_table('files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=True),
    sa.Column('inode', sa.BigInteger(), nullable=True),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_files_frame_id_frames'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files')),
    sa.UniqueConstraint('path', name=op.f('uq_files_path'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_frame_id'), ['frame_id'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=True),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_events_frame_id_frames'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_frame_id'), ['frame_id'], unique=False)


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("files")
    op.drop_table("frames")
