"""building_reviews: reviewers' verdicts on a job's buildings, and buildings they added

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 19:00:00
"""

import geoalchemy2
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "building_reviews",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column(
            "job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "building_id", sa.BigInteger(), sa.ForeignKey("buildings.id", ondelete="CASCADE")
        ),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column(
            "geom",
            geoalchemy2.Geometry("GEOMETRY", srid=4326, spatial_index=False),
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.Integer(), sa.ForeignKey("api_keys.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "building_id"),
    )
    op.create_index("ix_building_reviews_job_id", "building_reviews", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_building_reviews_job_id", "building_reviews")
    op.drop_table("building_reviews")
