"""What the driver knew of the transaction when a call failed: the facts `outcome.decide` needs.

Pure functions over the values each driver keeps (psycopg's transaction status read before the
call, PyMySQL/aiomysql's status flags), the same rules as the sync proxy's ``_facts``
(`aurora_smartdriver.connection`); tests/test_aio_facts.py checks that they agree.
"""

from __future__ import annotations

from aurora_smartdriver.outcome import Transaction

__all__ = ["mysql", "psycopg"]

IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN = 0, 1, 2, 3, 4
"""libpq's PQtransactionStatus values."""
MYSQL_IN_TRANS, MYSQL_AUTOCOMMIT = 1, 2
"""The MySQL protocol's SERVER_STATUS_IN_TRANS and SERVER_STATUS_AUTOCOMMIT flags."""


def psycopg(before: int | None, *, autocommit: bool, pipeline: bool) -> tuple[Transaction, bool]:
    """The transaction before the call and whether the call may have reached the server,
    from the status psycopg reported just before it."""
    if before is None or before == UNKNOWN:
        return "open", False  # lost before this call: whatever was open is gone
    if before == ACTIVE or pipeline:
        return "busy", True  # another statement was under way: nothing can be promised
    if before in (INTRANS, INERROR):
        return "open", True
    return ("none" if autocommit else "implicit"), True


def mysql(status: int, *, rows_since_boundary: bool, sent: bool) -> tuple[Transaction, bool]:
    """The same from the server's last status flags; ``rows_since_boundary``: a statement
    that returned rows ran since the last commit or rollback (its flags are not in an OK
    packet, and without autocommit it may have opened a transaction)."""
    if status & MYSQL_IN_TRANS or (not status & MYSQL_AUTOCOMMIT and rows_since_boundary):
        return "open", sent
    return ("none" if status & MYSQL_AUTOCOMMIT else "implicit"), sent
