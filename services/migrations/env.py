"""Alembic environment: run on the connection the service hands over (``services.store.db.migrate``)."""

from alembic import context

from services.store.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
