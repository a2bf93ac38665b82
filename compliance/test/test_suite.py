"""SQLAlchemy's dialect compliance suite, run as is against the aurora dialects."""

from __future__ import annotations

from typing import Any

from sqlalchemy.testing.suite import *  # noqa: F403
from sqlalchemy.testing.suite import ServerSideCursorsTest as _ServerSideCursorsTest


class ServerSideCursorsTest(_ServerSideCursorsTest):
    # The suite recognises a server-side cursor by the driver's name, and knows only the
    # drivers' own dialects; the library's cursor wraps the driver's, so look at that one.
    def _is_server_side(self, cursor: Any) -> bool:
        if self.engine.dialect.is_async:
            # SQLAlchemy's adapted cursor over the library's: its own flag says it.
            return bool(getattr(cursor, "server_side", False))
        raw = getattr(cursor, "_raw", cursor)
        if self.engine.dialect.driver == "aurora_pymysql":
            from pymysql.cursors import SSCursor

            return isinstance(raw, SSCursor)
        return bool(getattr(raw, "name", False))
