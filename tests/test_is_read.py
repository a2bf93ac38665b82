"""Which statements retry_reads may re-run after a failover: reads only, conservatively."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver.connection import is_read

_WRITE_WORDS = [
    "FOR UPDATE",
    "FOR SHARE",
    "LOCK IN SHARE MODE",
    "INTO",
    "INSERT",
    "UPDATE",
    "DELETE",
]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select * from t where id = %s",
        "(SELECT a FROM t) UNION (SELECT b FROM u)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SHOW TABLES",
        "EXPLAIN SELECT 1",
        b"SELECT 1",
    ],
)
def test_reads(sql: str | bytes) -> None:
    assert is_read(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "SELECT * FROM t FOR UPDATE",
        "select * from t for share",
        "SELECT a INTO OUTFILE '/tmp/x' FROM t",
        "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
        "CALL p()",
        "BEGIN",
        "",
        None,
    ],
)
def test_writes_and_unknowns(sql: str | None) -> None:
    assert not is_read(sql)


@given(
    head=st.sampled_from(["SELECT", "WITH", "SHOW", "select"]),
    middle=st.text(alphabet=st.characters(categories=["L", "N"]), max_size=20),
    word=st.sampled_from(_WRITE_WORDS),
)
def test_a_write_word_anywhere_makes_it_a_write(head: str, middle: str, word: str) -> None:
    assert not is_read(f"{head} {middle} {word} x")


@given(st.text(max_size=40))
def test_only_known_read_prefixes_are_reads(text: str) -> None:
    if is_read(text):
        stripped = text.lstrip(" \t\r\n(").lower()
        assert stripped.startswith(("select", "show", "with", "values", "table", "explain", "desc"))
