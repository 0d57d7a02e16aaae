"""Indexes on the columns the platform looks rows up by that had none, and expired sessions gone.

``memberships.user_id`` (every task a user is in: identity-key rotation and revocation write to the
log of each, the ledger's member checks), ``tasks.creator_id`` (``list --creator``, the tasks a user
created), ``session_tokens.user_id`` (deleting a user's sessions) and ``session_tokens.expires_at``:
the platform now deletes expired session and transfer tokens at each login instead of keeping every
one it ever issued, and this revision deletes those that expired already.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = (("ix_memberships_user_id", "memberships", "user_id"), ("ix_tasks_creator_id", "tasks", "creator_id"),
           ("ix_session_tokens_user_id", "session_tokens", "user_id"),
           ("ix_session_tokens_expires_at", "session_tokens", "expires_at"))


def upgrade() -> None:
    for name, table, column in INDEXES:
        op.create_index(name, table, [column], unique=False)
    tokens = sa.table("session_tokens", sa.column("expires_at", sa.DateTime()))
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # the platform stores naive UTC
    op.execute(tokens.delete().where(tokens.c.expires_at < now))


def downgrade() -> None:
    for name, table, _column in reversed(INDEXES):
        op.drop_index(name, table_name=table)
