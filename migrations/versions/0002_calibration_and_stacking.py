"""Calibration and stacking: masters, calibrated lights, stacks, frame quality.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.add_column(sa.Column('group_key', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('n_stars', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('fwhm', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('elongation', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sky', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('sky_noise', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('saturated_fraction', sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f('ix_frames_group_key'), ['group_key'], unique=False)

    op.create_table('masters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('calib_key', sa.String(length=255), nullable=False),
    sa.Column('camera_key', sa.String(length=255), nullable=False),
    sa.Column('exptime', sa.Float(), nullable=True),
    sa.Column('filter', sa.String(length=80), nullable=True),
    sa.Column('ccd_temp', sa.Float(), nullable=True),
    sa.Column('night', sa.String(length=10), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('preview_path', sa.Text(), nullable=True),
    sa.Column('n_frames', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('bias_subtracted', sa.Boolean(), nullable=False),
    sa.Column('dark_subtracted', sa.Boolean(), nullable=False),
    sa.Column('bias_id', sa.Integer(), nullable=True),
    sa.Column('dark_id', sa.Integer(), nullable=True),
    sa.Column('date_start', sa.DateTime(), nullable=True),
    sa.Column('date_end', sa.DateTime(), nullable=True),
    sa.Column('date_mid', sa.DateTime(), nullable=True),
    sa.Column('mean', sa.Float(), nullable=True),
    sa.Column('noise', sa.Float(), nullable=True),
    sa.Column('hot_pixels', sa.Integer(), nullable=True),
    sa.Column('ccdwatch_version', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['bias_id'], ['masters.id'], name=op.f('fk_masters_bias_id_masters')),
    sa.ForeignKeyConstraint(['dark_id'], ['masters.id'], name=op.f('fk_masters_dark_id_masters')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_masters')),
    sa.UniqueConstraint('calib_key', 'night', 'version', name=op.f('uq_masters_calib_key_night_version'))
    )
    with op.batch_alter_table('masters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_masters_camera_key'), ['camera_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_masters_date_mid'), ['date_mid'], unique=False)
        batch_op.create_index(batch_op.f('ix_masters_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_masters_night'), ['night'], unique=False)

    op.create_table('calibrated',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('current', sa.Boolean(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('bias_id', sa.Integer(), nullable=True),
    sa.Column('dark_id', sa.Integer(), nullable=True),
    sa.Column('flat_id', sa.Integer(), nullable=True),
    sa.Column('dark_scale', sa.Float(), nullable=True),
    sa.Column('partial', sa.Boolean(), nullable=False),
    sa.Column('missing', sa.Text(), nullable=True),
    sa.Column('ccdwatch_version', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['bias_id'], ['masters.id'], name=op.f('fk_calibrated_bias_id_masters')),
    sa.ForeignKeyConstraint(['dark_id'], ['masters.id'], name=op.f('fk_calibrated_dark_id_masters')),
    sa.ForeignKeyConstraint(['flat_id'], ['masters.id'], name=op.f('fk_calibrated_flat_id_masters')),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_calibrated_frame_id_frames')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibrated')),
    sa.UniqueConstraint('frame_id', 'version', name=op.f('uq_calibrated_frame_id_version'))
    )
    with op.batch_alter_table('calibrated', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calibrated_current'), ['current'], unique=False)
        batch_op.create_index(batch_op.f('ix_calibrated_frame_id'), ['frame_id'], unique=False)

    op.create_table('master_inputs',
    sa.Column('master_id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_master_inputs_frame_id_frames')),
    sa.ForeignKeyConstraint(['master_id'], ['masters.id'], name=op.f('fk_master_inputs_master_id_masters'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('master_id', 'frame_id', name=op.f('pk_master_inputs'))
    )
    with op.batch_alter_table('master_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_master_inputs_frame_id'), ['frame_id'], unique=False)

    op.create_table('stacks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('group_key', sa.String(length=255), nullable=False),
    sa.Column('night', sa.String(length=10), nullable=False),
    sa.Column('target', sa.String(length=80), nullable=False),
    sa.Column('filter', sa.String(length=80), nullable=True),
    sa.Column('exptime', sa.Float(), nullable=True),
    sa.Column('camera_key', sa.String(length=255), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('current', sa.Boolean(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('preview_path', sa.Text(), nullable=True),
    sa.Column('n_used', sa.Integer(), nullable=False),
    sa.Column('n_rejected', sa.Integer(), nullable=False),
    sa.Column('total_exposure', sa.Float(), nullable=False),
    sa.Column('reference_frame_id', sa.Integer(), nullable=True),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('ccdwatch_version', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['reference_frame_id'], ['frames.id'], name=op.f('fk_stacks_reference_frame_id_frames')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stacks')),
    sa.UniqueConstraint('group_key', 'version', name=op.f('uq_stacks_group_key_version'))
    )
    with op.batch_alter_table('stacks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stacks_group_key'), ['group_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_stacks_night'), ['night'], unique=False)
        batch_op.create_index(batch_op.f('ix_stacks_target'), ['target'], unique=False)

    op.create_table('stack_members',
    sa.Column('stack_id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('calibrated_id', sa.Integer(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('used', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('transform', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['calibrated_id'], ['calibrated.id'], name=op.f('fk_stack_members_calibrated_id_calibrated')),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_stack_members_frame_id_frames')),
    sa.ForeignKeyConstraint(['stack_id'], ['stacks.id'], name=op.f('fk_stack_members_stack_id_stacks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('stack_id', 'frame_id', name=op.f('pk_stack_members'))
    )
    with op.batch_alter_table('stack_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stack_members_frame_id'), ['frame_id'], unique=False)


def downgrade() -> None:
    for table in ("stack_members", "stacks", "master_inputs", "calibrated", "masters"):
        op.drop_table(table)
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_frames_group_key"))
        batch_op.drop_column("group_key")
        batch_op.drop_column("n_stars")
        batch_op.drop_column("fwhm")
        batch_op.drop_column("elongation")
        batch_op.drop_column("sky")
        batch_op.drop_column("sky_noise")
        batch_op.drop_column("saturated_fraction")
