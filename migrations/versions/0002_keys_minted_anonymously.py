"""api_keys.minted_anonymously: keys created through the API while keys were off

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 07:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("minted_anonymously", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("api_keys", "minted_anonymously")
