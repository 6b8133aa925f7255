"""Evaluations: a job's result, and the pretraining job an evaluation scores.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("source_job_id", sa.String(64)))
        batch.add_column(sa.Column("result", sa.JSON()))
        batch.create_foreign_key(
            "fk_jobs_source_job_id", "jobs", ["source_job_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index("ix_jobs_source_job_id", ["source_job_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_source_job_id")
        batch.drop_constraint("fk_jobs_source_job_id", type_="foreignkey")
        batch.drop_column("result")
        batch.drop_column("source_job_id")
