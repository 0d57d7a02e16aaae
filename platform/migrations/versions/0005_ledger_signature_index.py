"""An index on ``ledger_entries (task, signature)``.

Every append of a signed statement first looks whether the same statement is there already (a retry
whose answer was lost gets the promise of where it is, not a second entry). Without an index that
lookup read every entry of the task, so an append cost more with every round: about 5.6 ms at 10,000
entries on SQLite (100 participants, 100 rounds), 0.16 ms with it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ledger_entries_task_signature", "ledger_entries", ["task", "signature"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_entries_task_signature", table_name="ledger_entries")
