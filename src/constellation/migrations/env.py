"""Alembic environment: runs on the connection that `registry.db.migrate` hands over (see
`constellation.migrations.config`), or on `sqlalchemy.url` when Alembic is driven by hand."""

from __future__ import annotations

from alembic import context

from constellation.registry.tables import Base

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # `alembic` CLI use: build from the configured URL
        from constellation.registry.db import make_engine

        engine = make_engine(context.config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
