"""Tokens: an optional expiry and the token that minted each one (revoking it revokes them too);
runs: an index for listing a project's runs newest first without reading them all.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("parent_id", sa.Integer, nullable=True))
        batch.create_index("ix_tokens_parent_id", ["parent_id"])
    op.create_index("ix_runs_project_created", "runs", ["project_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_project_created", "runs")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_index("ix_tokens_parent_id")
        batch.drop_column("parent_id")
        batch.drop_column("expires_at")
