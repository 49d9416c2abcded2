"""Replica leases and ticket owners: a live replica finishes the tickets of a dead one (issue 19).

Also `tickets.webhook_due_at`: set when a ticket completes on a server with a ticket webhook,
cleared once the webhook took it, so a delivery cut short (crash, database cut) is retried.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("replica_id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_replicas_heartbeat_at", "replicas", ["heartbeat_at"])
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("owner_replica", sa.String(64), nullable=True))
        batch.add_column(sa.Column("webhook_due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_tickets_owner_replica", "tickets", ["owner_replica"])
    op.create_index("ix_tickets_webhook_due_at", "tickets", ["webhook_due_at"])


def downgrade() -> None:
    op.drop_index("ix_tickets_webhook_due_at", table_name="tickets")
    op.drop_index("ix_tickets_owner_replica", table_name="tickets")
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("webhook_due_at")
        batch.drop_column("owner_replica")
    op.drop_table("replicas")
