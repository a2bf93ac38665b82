"""The outcome decision (aurora_smartdriver.outcome): DESIGN.md's table, and properties over
every combination of what was in flight and what the driver knew."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver.outcome import (
    Call,
    Effect,
    Situation,
    Transaction,
    classify,
    decide,
    is_failover_signal,
    is_read,
)

situations = st.builds(
    Situation,
    call=st.sampled_from(get_args(Call)),
    transaction=st.sampled_from(get_args(Transaction)),
    sent=st.booleans(),
    effect=st.sampled_from(get_args(Effect)),
    retry_reads=st.booleans(),
    refused=st.booleans(),
    engine=st.sampled_from(["postgresql", "mysql"]),
    single=st.booleans(),
)


def _may_have_committed(s: Situation) -> bool:
    """Whether the lost call may have made work durable (stated independently of `decide`)."""
    if s.transaction == "busy":
        return s.call != "rollback"  # another statement was under way: it may have
    if s.refused and s.sent and s.call == "statement" and not s.single:
        return s.transaction == "none"  # the statements before the refused one, in autocommit
    if not s.sent or s.refused or s.call in ("rollback", "ping"):
        return False
    if s.call == "commit":
        return s.transaction == "open"
    if s.effect == "commit":
        return True
    if s.effect == "begin":
        return s.engine == "mysql" and s.transaction == "open"
    return s.transaction == "none" and s.effect in ("write", "rollback")


# -- the table in DESIGN.md, row by row ------------------------------------------------------


def test_in_a_transaction_before_commit_is_rolled_back() -> None:
    got = decide(Situation("statement", "open", True, "write"))
    assert got.raise_failover_succeeded and got.transaction_rolled_back and got.fail_over_now


def test_commit_in_flight_is_unknown() -> None:
    assert decide(Situation("commit", "open", True)).outcome_unknown


@pytest.mark.parametrize("text", ["COMMIT", "end", "commit work", "/* x */ COMMIT"])
@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_textual_commit_in_flight_is_unknown(text: str, engine: str) -> None:
    effect = classify(text, engine)
    assert decide(Situation("statement", "open", True, effect, engine=engine)).outcome_unknown


def test_autocommit_write_in_flight_is_unknown() -> None:
    got = decide(Situation("statement", "none", True, classify("INSERT INTO t VALUES (1)", "x")))
    assert got.outcome_unknown and not got.rerun


def test_autocommit_read_in_flight_is_failover_succeeded_or_rerun() -> None:
    plain = decide(Situation("statement", "none", True, "read"))
    assert plain.raise_failover_succeeded and not plain.transaction_rolled_back
    retried = decide(Situation("statement", "none", True, "read", retry_reads=True))
    assert retried.rerun and not retried.raise_failover_succeeded


def test_nothing_in_flight_runs_on_the_new_node() -> None:
    got = decide(Situation("statement", "none", False, "write"))
    assert got.rerun and got.fail_over_now and not got.raise_failover_succeeded


def test_rollback_waits_for_nothing() -> None:
    for transaction in ("none", "implicit", "open"):
        got = decide(Situation("rollback", transaction, True))  # type: ignore[arg-type]
        assert got.verdict == "nothing_lost" and not got.fail_over_now


def test_a_refused_write_did_nothing() -> None:
    got = decide(Situation("statement", "none", True, "write", refused=True))
    assert got.raise_failover_succeeded and not got.transaction_rolled_back
    inside = decide(Situation("statement", "open", True, "write", refused=True))
    assert inside.transaction_rolled_back


def test_a_refused_batch_in_autocommit_may_have_committed_its_first_rows() -> None:
    got = decide(Situation("statement", "none", True, "write", refused=True, single=False))
    assert got.outcome_unknown


def test_mysql_begin_commits_an_open_transaction() -> None:
    assert decide(Situation("statement", "open", True, "begin", engine="mysql")).outcome_unknown
    assert decide(Situation("statement", "open", True, "begin")).transaction_rolled_back


# -- properties -------------------------------------------------------------------------------


@given(situations)
def test_work_that_may_have_committed_is_always_unknown(s: Situation) -> None:
    if _may_have_committed(s):
        assert decide(s).outcome_unknown


@given(situations)
def test_unknown_only_when_something_may_have_committed(s: Situation) -> None:
    if decide(s).outcome_unknown:
        assert _may_have_committed(s)


@given(situations)
def test_only_what_never_ran_or_changes_nothing_is_run_again(s: Situation) -> None:
    got = decide(s)
    if got.rerun:
        assert s.transaction != "open"
        changes_nothing = s.call == "ping" or s.effect == "begin"
        assert not s.sent or changes_nothing or (s.effect == "read" and s.retry_reads)


@given(situations)
def test_an_outcome_says_exactly_one_thing(s: Situation) -> None:
    got = decide(s)
    said = [got.outcome_unknown, got.raise_failover_succeeded, got.rerun]
    assert sum(said) <= 1
    if sum(said) == 0:
        assert got.verdict == "nothing_lost" and not got.fail_over_now
    assert not got.transaction_rolled_back or got.raise_failover_succeeded


@given(situations)
def test_rolled_back_only_when_a_transaction_was_there(s: Situation) -> None:
    if decide(s).transaction_rolled_back:
        assert s.transaction in ("open", "implicit")


# -- statements -------------------------------------------------------------------------------

_MULTI_TAILS = ["call transfer(1,2)", "TRUNCATE t", "DROP TABLE t", "COPY t FROM stdin", "DO $$"]


@pytest.mark.parametrize("tail", _MULTI_TAILS)
def test_a_multi_statement_string_is_never_a_read(tail: str) -> None:
    assert not is_read(f"select 1; {tail}")
    assert classify(f"select 1; {tail}", "postgresql") != "read"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT transfer(1, 2)",
        "SELECT nextval('s')",
        "SELECT pg_advisory_lock(1)",
        "SELECT * FROM t FOR UPDATE",
        "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
    ],
)
def test_a_select_that_may_write_or_lock_is_not_a_read(sql: str) -> None:
    assert not is_read(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select count(*) from t where id in (1, 2)",
        "SELECT coalesce(max(id), 0) FROM t",
        "select 'b(' from t",
        "SELECT 1;",
    ],
)
def test_plain_reads_are_reads(sql: str) -> None:
    assert is_read(sql)
    assert classify(sql, "postgresql") == classify(sql, "mysql") == "read"


@pytest.mark.parametrize(
    "sql",
    ["CREATE TABLE t (a int)", "TRUNCATE t", "LOCK TABLES t WRITE", "CALL p()", "/*!COMMIT*/"],
)
def test_mysql_statements_with_an_implicit_commit(sql: str) -> None:
    assert classify(sql, "mysql") == "commit"


@pytest.mark.parametrize("sql", ["CREATE TABLE t (a int)", "CALL p()", "TRUNCATE t"])
def test_postgresql_ddl_is_transactional(sql: str) -> None:
    assert classify(sql, "postgresql") == "write"


_PIECES = st.sampled_from(
    ["SELECT 1", "INSERT INTO t VALUES (1)", "UPDATE t SET a = 1", "COMMIT", "select now()", ""]
)


@given(st.lists(_PIECES, min_size=1, max_size=5), st.sampled_from(["postgresql", "mysql"]))
def test_a_commit_anywhere_in_the_text_makes_it_commit(pieces: list[str], engine: str) -> None:
    text = "; ".join(pieces)
    if "COMMIT" in pieces:
        assert classify(text, engine) == "commit"
    real = [p for p in pieces if p]
    if len(real) > 1:
        assert not is_read(text)


@given(st.text(max_size=60), st.sampled_from(["postgresql", "mysql"]))
def test_classify_never_fails_and_reads_agree(text: str, engine: str) -> None:
    effect = classify(text, engine)
    if is_read(text):
        assert effect == "read"


def test_literals_and_comments_are_read_by_each_engines_rules() -> None:
    assert is_read("select 'a;b' from t")
    assert classify("insert into t values ('a; commit')", "postgresql") == "write"
    assert is_read("select count(*) from t -- a comment; commit\n where a = 'x;y'")


@pytest.mark.parametrize(
    ("sql", "engine"),
    [
        ("SELECT '--', bump_counter()", "postgresql"),
        ("SELECT '#', bump_counter()", "mysql"),
        ("SELECT 5 # 3, f()", "postgresql"),  # an operator in PostgreSQL
        ("SELECT 2--1, f()", "mysql"),  # MySQL needs a space after --
        ("SELECT 1 /*M!, insert_row() */", "mysql"),  # MariaDB runs it
        ("SELECT 'it\\'s', f(), 'x'", "mysql"),
        ("SELECT CONCAT(\"Don't\", name), log_view(id) FROM t WHERE s = 'x'", "mysql"),
        ("SELECT E'it\\'s', f(), 'x'", "postgresql"),
        ("SELECT $$'$$, f(), $$'$$", "postgresql"),
        ('SELECT "bump_counter"()', "postgresql"),
        ("SELECT `bump_counter`()", "mysql"),
        ('SELECT public."bump"(1)', "postgresql"),
        ('WITH x AS (UPDATE"t" SET a = 1 RETURNING *) SELECT * FROM x', "postgresql"),
        ('SELECT * INTO"t2" FROM t', "postgresql"),
        ("EXPLAIN ANALYZE EXECUTE ins", "postgresql"),
        ("SELECT 'never closed", "postgresql"),
    ],
)
def test_a_call_or_write_hidden_by_quoting_or_comments_is_not_a_read(sql: str, engine: str) -> None:
    assert not is_read(sql, engine)
    assert classify(sql, engine) != "read"


@pytest.mark.parametrize(
    ("sql", "engine"),
    [
        ("SELECT '--'; COMMIT", "postgresql"),
        ("SELECT $$/*$$; COMMIT; SELECT $$*/$$", "postgresql"),
        ("/*M! COMMIT */", "mysql"),
        ("/*!COMMIT*/", "mysql"),
        ("SET STATEMENT lock_wait_timeout=5 FOR ALTER TABLE t ADD c INT", "mysql"),
    ],
)
def test_a_commit_hidden_by_quoting_or_comments_is_seen(sql: str, engine: str) -> None:
    assert classify(sql, engine) == "commit"


@given(
    st.text(alphabet=st.characters(blacklist_characters="'\\"), max_size=30),
    st.sampled_from(["postgresql", "mysql"]),
)
def test_anything_inside_a_string_literal_is_only_data(inside: str, engine: str) -> None:
    assert classify(f"SELECT 'x{inside}' FROM t", engine) == "read"


def test_text_that_cannot_be_read_counts_as_a_commit() -> None:
    assert classify(object(), "postgresql") == "commit"
    assert not is_read(None)


# -- read-only errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked_writer", "session_read_only", "lent_as_writer", "expected"),
    [
        (True, False, True, True),  # a demoted writer
        (False, False, True, False),  # a reader connection writing: the application's error
        (True, True, True, False),  # read_only = True fell back to the writer
        (True, False, False, False),  # lent as a reader (role=any)
    ],
)
def test_a_read_only_error_is_a_signal_only_for_a_writer_connection(
    asked_writer: bool, session_read_only: bool, lent_as_writer: bool, expected: bool
) -> None:
    got = is_failover_signal(
        "read_only",
        failover=True,
        asked_writer=asked_writer,
        session_read_only=session_read_only,
        lent_as_writer=lent_as_writer,
    )
    assert got is expected


@given(st.sampled_from(["disconnect", "read_only", "auth", "other"]), st.booleans())
def test_failover_off_means_no_signal(kind: str, flag: bool) -> None:
    assert not is_failover_signal(
        kind, failover=False, asked_writer=flag, session_read_only=flag, lent_as_writer=flag
    )
