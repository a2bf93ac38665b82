"""SQLAlchemy dialects over aurora_smartdriver (``pip install 'aurora-smartdriver[sqlalchemy]'``).

Registered as entry points, so nothing needs importing::

    from sqlalchemy import create_engine

    engine = create_engine(
        "postgresql+aurora_psycopg://app:pw@orders.cluster-abc.us-east-1.rds.amazonaws.com/app"
        "?failover_timeout=30&reader_strategy=least_connections"
    )
    readers = engine.execution_options(aurora_role="reader")   # work on a reader

``mysql+aurora_pymysql://`` and ``mariadb+aurora_pymysql://`` do the same for PyMySQL. Query
parameters are the library's (docs/parameters.md) and the driver parameters the library passes
on; anything else is a ``ConfigError`` at ``create_engine``. See docs/sqlalchemy.md.
"""

from __future__ import annotations

from sqlalchemy.engine import URL

from aurora_smartdriver.sqlalchemy._dialects import (
    AuroraMariaDBDialect_pymysql,
    AuroraMySQLDialect_pymysql,
    AuroraPGDialect_psycopg,
    AuroraRoleCharacteristic,
    ReadYourWrites,
)
from aurora_smartdriver.sqlalchemy._options import ROLE_OPTION, engine_url_parts

__all__ = [
    "ROLE_OPTION",
    "AuroraMariaDBDialect_pymysql",
    "AuroraMySQLDialect_pymysql",
    "AuroraPGDialect_psycopg",
    "AuroraRoleCharacteristic",
    "ReadYourWrites",
    "engine_url",
]


def engine_url(dsn: str) -> URL:
    """The SQLAlchemy URL for a library DSN (``postgresql://...`` -> ``postgresql+aurora_psycopg``).

    Everything the DSN says is kept: library and driver parameters go in the query, several
    hosts in repeated ``host`` items. Render it with ``url.render_as_string(hide_password=False)``
    when you need the text; ``str(url)`` masks the password.
    """
    drivername, username, password, host, port, database, query = engine_url_parts(dsn)
    return URL.create(
        drivername,
        username=username,
        password=password,
        host=host,
        port=port,
        database=database,
        query={name: v[0] if len(v) == 1 else tuple(v) for name, v in query.items()},
    )
