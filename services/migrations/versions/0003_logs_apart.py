"""Attempt logs apart from the job rows, appended in chunks; non-finite metric values.

A Ray job's log moves from ``attempts.log`` (read with every job and rewritten whole on every
reconciliation pass) into ``attempt_logs``, one row per appended chunk keyed by the chunk's offset;
``attempts.log_size`` counts the characters received so far. ``metrics.value`` becomes nullable:
NULL stores NaN, which SQLite cannot keep in a REAL column.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attempt_logs",
        sa.Column(
            "attempt_id",
            sa.Integer(),
            sa.ForeignKey("attempts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("start", sa.BigInteger(), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("log_size", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "INSERT INTO attempt_logs (attempt_id, start, text) "
        "SELECT id, 0, log FROM attempts WHERE log <> ''"
    )
    op.execute("UPDATE attempts SET log_size = length(log)")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("log")
    with op.batch_alter_table("metrics") as batch:
        batch.alter_column("value", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM metrics WHERE value IS NULL")  # NaN has no place in 0002's schema
    with op.batch_alter_table("metrics") as batch:
        batch.alter_column("value", existing_type=sa.Float(), nullable=False)
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("log", sa.Text(), nullable=False, server_default=""))
    op.execute(
        "UPDATE attempts SET log = COALESCE((SELECT string_agg(text, '' ORDER BY start) "
        "FROM attempt_logs WHERE attempt_logs.attempt_id = attempts.id), '')"
        if op.get_bind().dialect.name == "postgresql"
        else "UPDATE attempts SET log = COALESCE((SELECT group_concat(text, '') FROM "
        "(SELECT text FROM attempt_logs WHERE attempt_logs.attempt_id = attempts.id "
        "ORDER BY start)), '')"
    )
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("log_size")
    op.drop_table("attempt_logs")
