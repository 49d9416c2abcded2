"""Per-response token usage on each ticket: the context chart and the cost per call read it.

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Spelled out rather than imported from store_models (a migration records its own revision).
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Nullable: rows written before this revision have no per-response usage (read back as none).
    op.add_column("tickets", sa.Column("response_usage", _JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("tickets", "response_usage")
