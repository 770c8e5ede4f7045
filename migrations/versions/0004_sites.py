"""Several telescopes in one catalogue: the site of frames, masters and stacks; unique versions per
site; the daemons that own incoming directories; claims on work in progress; reprocessing campaigns.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site", sa.String(length=80), nullable=True))
        batch_op.create_index(batch_op.f("ix_frames_site"), ["site"], unique=False)
    with op.batch_alter_table("masters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site", sa.String(length=80), nullable=True))
        batch_op.create_index(batch_op.f("ix_masters_site"), ["site"], unique=False)
        batch_op.drop_constraint("uq_masters_calib_key_night_version", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_masters_site_calib_key_night_version"),
                                          ["site", "calib_key", "night", "version"])
    with op.batch_alter_table("stacks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site", sa.String(length=80), nullable=True))
        batch_op.create_index(batch_op.f("ix_stacks_site"), ["site"], unique=False)
        batch_op.drop_constraint("uq_stacks_group_key_version", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_stacks_site_group_key_version"),
                                          ["site", "group_key", "version"])
    op.create_table(
        "daemons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=80), nullable=False),
        sa.Column("incoming", sa.Text(), nullable=False),
        sa.Column("products", sa.Text(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("scheduler", sa.String(length=255), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daemons")),
        sa.UniqueConstraint("incoming", name=op.f("uq_daemons_incoming")),
        sa.UniqueConstraint("site", name=op.f("uq_daemons_site")),
    )
    op.create_table(
        "claims",
        sa.Column("what", sa.String(length=400), nullable=False),
        sa.Column("site", sa.String(length=80), nullable=True),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("what", name=op.f("pk_claims")),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=80), nullable=True),
        sa.Column("selection", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )


def downgrade() -> None:
    op.drop_table("campaigns")
    op.drop_table("claims")
    op.drop_table("daemons")
    with op.batch_alter_table("stacks", schema=None) as batch_op:
        batch_op.drop_constraint("uq_stacks_site_group_key_version", type_="unique")
        batch_op.create_unique_constraint("uq_stacks_group_key_version", ["group_key", "version"])
        batch_op.drop_index(batch_op.f("ix_stacks_site"))
        batch_op.drop_column("site")
    with op.batch_alter_table("masters", schema=None) as batch_op:
        batch_op.drop_constraint("uq_masters_site_calib_key_night_version", type_="unique")
        batch_op.create_unique_constraint("uq_masters_calib_key_night_version", ["calib_key", "night", "version"])
        batch_op.drop_index(batch_op.f("ix_masters_site"))
        batch_op.drop_column("site")
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_frames_site"))
        batch_op.drop_column("site")
