"""Stack members: each frame's sky offset and flux scale against the reference (and why unscaled).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stack_members", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sky_offset", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("scale", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("scale_note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stack_members", schema=None) as batch_op:
        batch_op.drop_column("scale_note")
        batch_op.drop_column("scale")
        batch_op.drop_column("sky_offset")
