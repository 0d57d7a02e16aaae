"""Alembic's environment for the platform's database.

At run time werkbund calls Alembic with an open connection in ``config.attributes["connection"]``
(``werkbund.platform.schema``). A developer may also run the ``alembic`` command with
``-c platform/migrations/alembic.ini`` and ``-x db=URL``, e.g. to write a new revision's skeleton.
"""
from alembic import context
from sqlalchemy import create_engine

from werkbund.platform.schema import metadata

config = context.config


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata(),
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if context.is_offline_mode():
    context.configure(url=context.get_x_argument(as_dictionary=True).get("db", "sqlite://"),
                      target_metadata=metadata(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif connection is not None:
    run(connection)
else:
    engine = create_engine(context.get_x_argument(as_dictionary=True).get("db", "sqlite://"))
    with engine.begin() as connection:
        run(connection)
