"""The service's durable record: SQLAlchemy tables (``tables``) and the operations on them (``store``)."""
