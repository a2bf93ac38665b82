"""PyMySQL's status flags come from OK packets only: an error's reply carries none, and a
ping makes PyMySQL forget the last result. A transaction opened before either must still be
seen: rolled back before the connection goes back to its pool, and judged open in a failover."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymysql
import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver.lab import Lab
from tests import plain


@pytest.fixture(autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    _runtime.close_all()


def _setup(lab: Lab) -> str:
    conn = asd.connect(lab.dsn, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS sent_items (id VARCHAR(64) PRIMARY KEY)")
        key = uuid.uuid4().hex
        cur.execute("INSERT INTO sent_items (id) VALUES (%s)", (key,))
    finally:
        conn.close()
    return key


def test_a_lock_taken_before_a_failed_statement_is_not_lent_to_the_next_borrower(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    key = _setup(lab)
    with asd.Cluster(f"{lab.dsn}&cluster_id=sent-{uuid.uuid4().hex}&pool_max_size=1") as cluster:
        with cluster.writer() as conn:
            cur = conn.cursor()
            cur.execute("SELECT id FROM sent_items WHERE id = %s FOR UPDATE", (key,))
            with pytest.raises(pymysql.err.IntegrityError):
                cur.execute("INSERT INTO sent_items (id) VALUES (%s)", (key,))
        assert not plain.row_locked(lab, "sent_items", key)  # the borrow ended its transaction


def test_a_ping_inside_a_transaction_does_not_hide_it(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    key = _setup(lab)
    conn = asd.connect(f"{lab.dsn}&cluster_id=sent-{uuid.uuid4().hex}")
    try:
        cur = conn.cursor()
        cur.execute("SELECT id FROM sent_items WHERE id = %s FOR UPDATE", (key,))
        conn.ping()
        assert conn._in_transaction(conn._raw)
        conn.read_only = True  # a move waits for the transaction's end
        assert conn.instance_id == lab.writer.id
        assert plain.row_locked(lab, "sent_items", key)
        conn.rollback()
        assert conn.instance_id != lab.writer.id
        assert not plain.row_locked(lab, "sent_items", key)
    finally:
        conn.close()
