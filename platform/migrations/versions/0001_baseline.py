"""Baseline: the platform's schema as it stood before it was versioned (users, session tokens,
tasks, memberships, rounds, stored models, the ledger's tables and identity keys).

A database made before the schema was versioned has exactly these tables and no
``alembic_version``; ``werkbund.platform.schema`` recognises it and stamps it with this revision.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('identity_key_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('public_key', sa.String(length=44), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_identity_key_events_user'), 'identity_key_events', ['user'], unique=False)
    op.create_table('identity_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user', sa.String(length=64), nullable=False),
        sa.Column('public_key', sa.String(length=44), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_identity_keys_user'), 'identity_keys', ['user'], unique=True)
    op.create_table('ledger_checkpoints',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task', sa.String(length=64), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('checkpoint', sa.Text(), nullable=False),
        sa.Column('signature', sa.String(length=88), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task', 'size')
    )
    op.create_index(op.f('ix_ledger_checkpoints_task'), 'ledger_checkpoints', ['task'], unique=False)
    op.create_table('ledger_cosignatures',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task', sa.String(length=64), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('member', sa.String(length=64), nullable=False),
        sa.Column('signature', sa.String(length=88), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task', 'size', 'member')
    )
    op.create_index(op.f('ix_ledger_cosignatures_task'), 'ledger_cosignatures', ['task'], unique=False)
    op.create_table('ledger_entries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('author', sa.String(length=64), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('entry', sa.Text(), nullable=False),
        sa.Column('signature', sa.String(length=88), nullable=False),
        sa.Column('leaf_hash', sa.String(length=64), nullable=False),
        sa.Column('entry_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task', 'seq')
    )
    op.create_index(op.f('ix_ledger_entries_task'), 'ledger_entries', ['task'], unique=False)
    op.create_table('users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('org', sa.String(length=128), nullable=False),
        sa.Column('password_hash', sa.String(length=256), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_users_name'), 'users', ['name'], unique=True)
    op.create_table('session_tokens',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_session_tokens_token_sha256'), 'session_tokens', ['token_sha256'], unique=True)
    op.create_table('tasks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('creator_id', sa.Integer(), nullable=False),
        sa.Column('definition', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.Column('started_at', sa.DateTime(), nullable=True),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['creator_id'], ['users.id'], ),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_tasks_name'), 'tasks', ['name'], unique=True)
    op.create_index(op.f('ix_tasks_status'), 'tasks', ['status'], unique=False)
    op.create_table('memberships',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('joined_at', sa.DateTime(), nullable=False),
        sa.Column('schema', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task_id', 'user_id')
    )
    op.create_table('rounds',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('reported', sa.JSON(), nullable=False),
        sa.Column('rejected', sa.JSON(), nullable=False),
        sa.Column('missing', sa.JSON(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task_id', 'number')
    )
    op.create_table('stored_models',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('meta', sa.JSON(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('task_id')
    )


def downgrade() -> None:
    op.drop_table('stored_models')
    op.drop_table('rounds')
    op.drop_table('memberships')
    op.drop_index(op.f('ix_tasks_status'), table_name='tasks')
    op.drop_index(op.f('ix_tasks_name'), table_name='tasks')
    op.drop_table('tasks')
    op.drop_index(op.f('ix_session_tokens_token_sha256'), table_name='session_tokens')
    op.drop_table('session_tokens')
    op.drop_index(op.f('ix_users_name'), table_name='users')
    op.drop_table('users')
    op.drop_index(op.f('ix_ledger_entries_task'), table_name='ledger_entries')
    op.drop_table('ledger_entries')
    op.drop_index(op.f('ix_ledger_cosignatures_task'), table_name='ledger_cosignatures')
    op.drop_table('ledger_cosignatures')
    op.drop_index(op.f('ix_ledger_checkpoints_task'), table_name='ledger_checkpoints')
    op.drop_table('ledger_checkpoints')
    op.drop_index(op.f('ix_identity_keys_user'), table_name='identity_keys')
    op.drop_table('identity_keys')
    op.drop_index(op.f('ix_identity_key_events_user'), table_name='identity_key_events')
    op.drop_table('identity_key_events')
