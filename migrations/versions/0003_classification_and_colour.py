"""How each frame was classified (and the evidence), colour sensors, retired masters.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.add_column(sa.Column("relpath", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("classification", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("bayer_pattern", sa.String(length=8), nullable=True))
    with op.batch_alter_table("masters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retired", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("masters", schema=None) as batch_op:
        batch_op.drop_column("retired")
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.drop_column("bayer_pattern")
        batch_op.drop_column("classification")
        batch_op.drop_column("relpath")
