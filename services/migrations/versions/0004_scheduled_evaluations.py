"""Evaluations a pretraining job asks for at submission.

``jobs.evaluate``: the list of evaluations ``POST /v1/jobs`` took (NULL: none);
``jobs.evaluations_scheduled``: true once the job has ended and every one of them is submitted.
Both are new columns with defaults: every existing row keeps its values.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("evaluate", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column(
                "evaluations_scheduled", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("evaluations_scheduled")
        batch.drop_column("evaluate")
