"""Returning callers: which earlier tickets seeded a call, forgotten tickets, lookup by number.

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("memory_ticket_ids", _JSON, nullable=True))
        batch.add_column(sa.Column("memory_excluded", sa.Boolean, nullable=False, server_default=sa.false()))
    # The lookup at call start: one number's tickets, newest first, the calls it made and the
    # calls placed to it (bench/memory_lookup.py).
    op.create_index("ix_tickets_from_number_started_at", "tickets", ["from_number", "started_at"])
    op.create_index("ix_tickets_to_number_started_at", "tickets", ["to_number", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_tickets_to_number_started_at", table_name="tickets")
    op.drop_index("ix_tickets_from_number_started_at", table_name="tickets")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("memory_excluded")
        batch.drop_column("memory_ticket_ids")
