"""The call's life on its ticket: direction, Twilio's final status and duration, AnsweredBy,
the outcome (e.g. voicemail_left), and an outbound call's placement, instructions and context.

Revision ID: 0003
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0005"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

_COLUMNS = (
    ("direction", lambda: sa.Column("direction", sa.String(16), nullable=False, server_default="inbound")),
    ("twilio_status", lambda: sa.Column("twilio_status", sa.String(16), nullable=True)),
    ("twilio_sequence", lambda: sa.Column("twilio_sequence", sa.Integer, nullable=True)),
    ("twilio_duration_s", lambda: sa.Column("twilio_duration_s", sa.Integer, nullable=True)),
    ("answered_by", lambda: sa.Column("answered_by", sa.String(32), nullable=True)),
    (
        "voicemail_left",
        lambda: sa.Column("voicemail_left", sa.Boolean, nullable=False, server_default=sa.false()),
    ),
    ("outcome", lambda: sa.Column("outcome", sa.String(32), nullable=True)),
    ("placement_id", lambda: sa.Column("placement_id", sa.String(64), nullable=True)),
    ("instructions", lambda: sa.Column("instructions", sa.Text, nullable=True)),
    ("call_context", lambda: sa.Column("call_context", _JSON, nullable=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        for _name, column in _COLUMNS:
            batch.add_column(column())


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        for name, _column in reversed(_COLUMNS):
            batch.drop_column(name)
