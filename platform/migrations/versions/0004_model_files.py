"""Final models as files named by their sha256, not bytes in the database.

``stored_models.data`` becomes nullable: a model's bytes live in the platform's model folder
(``<model dir>/<sha256>``, ``platform/storage/files.py``) and the row keeps the hash, size and metadata.
Rows written before this revision keep their bytes in ``data`` until the platform service first starts
on the upgraded database and moves them to files (``PlatformService._move_models_to_files``), so an
upgrade needs no access to the model folder. ``size`` becomes a 64-bit integer: models of several GB.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stored_models") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=True)
        batch.alter_column("size", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    # a model stored as a file has no bytes here: a downgrade needs them put back first
    with op.batch_alter_table("stored_models") as batch:
        batch.alter_column("size", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=False)
