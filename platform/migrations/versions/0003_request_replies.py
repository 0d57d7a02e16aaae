"""The replies to state-changing control commands, keyed by (user, request id).

A client retries a command through a platform restart with the same request id; the platform keeps
the reply it gave, written in the command's own transaction, and answers a retry with it instead of
running the command twice (``platform/request_replies.py``). Rows older than a day are deleted.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_replies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("command", sa.String(length=64), nullable=False),
        sa.Column("reply", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_name", "request_id"),
    )
    op.create_index("ix_request_replies_created_at", "request_replies", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_request_replies_created_at", table_name="request_replies")
    op.drop_table("request_replies")
