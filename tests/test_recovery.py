"""`_recovery`: what a failed call means and what the application is told, decided once for
the sync and the asyncio connections (their I/O around it: tests/test_outcomes_lab.py, the
ledger tests)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aurora_smartdriver import _recovery, outcome
from aurora_smartdriver.errors import FailoverSucceeded, TransactionOutcomeUnknown
from aurora_smartdriver.outcome import Call, Transaction

from .test_outcome import _may_have_committed, situations

_facts = st.none() | st.tuples(st.sampled_from(get_args(Transaction)), st.booleans())
_queries = st.sampled_from(
    ["SELECT 1", "INSERT INTO t VALUES (1)", "COMMIT", "BEGIN", "SELECT 1; DELETE FROM t", None]
)


@given(
    st.sampled_from(get_args(Call)),
    _facts,
    st.booleans(),
    _queries,
    st.sampled_from(["postgresql", "mysql"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_the_situation_is_what_the_driver_connection_showed(
    call: Call,
    facts: tuple[Transaction, bool] | None,
    interrupted: bool,
    query: str | None,
    engine: str,
    refused: bool,
    batch: bool,
    retry_reads: bool,
) -> None:
    s = _recovery.situation(
        call,
        facts,
        interrupted=interrupted,
        query=query,
        engine=engine,
        retry_reads=retry_reads,
        refused=refused,
        batch=batch,
    )
    assert (s.call, s.engine, s.retry_reads) == (call, engine, retry_reads)
    if facts is None:  # on no node: nothing was sent, nothing was open
        assert (s.transaction, s.sent) == ("none", False)
    elif interrupted:  # an earlier call cut off: it may be running still
        assert (s.transaction, s.sent) == ("busy", True)
    else:
        assert (s.transaction, s.sent) == facts
    assert s.effect == (outcome.classify(query, engine) if call == "statement" else "write")
    assert s.single == (not batch and outcome.is_single(query, engine))
    assert s.refused == refused


@given(situations, st.booleans(), st.booleans(), st.booleans())
def test_a_connection_reconnects_only_when_the_outcome_asks_and_nobody_did(
    s: outcome.Situation, detached: bool, moved: bool, still_detached: bool
) -> None:
    assume(not (detached and moved))  # moved: the driver connection it failed on was replaced
    decided = outcome.decide(s)
    step = _recovery.next_step(
        decided, detached=detached, moved=moved, still_detached=still_detached
    )
    if not decided.fail_over_now:
        # Nothing lost (a rollback): the dead driver connection let go of, unless there is
        # none (detached) or it is not this call's any more (moved by another caller).
        assert step == ("stay" if detached or moved else "detach")
    elif moved and not still_detached:
        assert step == "answer"  # the other caller put it on a new node already
    else:
        assert step == ("attach" if detached or moved else "fail_over")


@given(situations, st.floats(min_value=0, max_value=100))
def test_the_answer_says_what_may_have_committed(s: outcome.Situation, after: float) -> None:
    decided = outcome.decide(s)
    if not decided.fail_over_now:
        return  # no new node is looked for: no answer of this kind
    exc = ConnectionResetError("reset by peer\nsecond line")
    told = _recovery.answer(decided, call=s.call, exc=exc, old="i-1", new="i-2", after=after)
    names = [name for name, _ in told.events]
    if _may_have_committed(s):
        assert told.error == "outcome_unknown"
        assert "may or may not have been committed" in told.message
        assert names == ["outcome_unknown"]
    elif decided.rerun:
        assert told.error is None
        assert names == (["read_retried"] if decided.verdict == "retry_read" else [])
    else:
        assert told.error == "failover_succeeded"
        assert told.message.endswith("run the work again")
        assert told.transaction_rolled_back == decided.transaction_rolled_back
        assert names == (["transaction_rolled_back"] if decided.transaction_rolled_back else [])
    if told.error is not None:
        assert "i-1" in told.message and "i-2" in told.message
        assert "ConnectionResetError: reset by peer" in told.message
        assert "second line" not in told.message
    if told.error == "failover_succeeded":
        assert ("rolled back" in told.message) == decided.transaction_rolled_back
    for name, fields in told.events:
        expected = {"instance": "i-2"} if name == "read_retried" else {"old": "i-1", "new": "i-2"}
        assert fields == {**expected, "after_s": after}


@given(situations)
def test_with_no_new_node_what_may_have_committed_is_still_unknown(
    s: outcome.Situation,
) -> None:
    decided = outcome.decide(s)
    failure = TimeoutError("no writer in 30 s")
    message = _recovery.unreachable(
        decided, call=s.call, exc=OSError("gone"), old="i-1", failure=failure
    )
    if _may_have_committed(s) and decided.fail_over_now:
        assert message is not None
        assert "may or may not have been committed" in message
        assert "TimeoutError: no writer in 30 s" in message
    else:
        assert message is None


class _Events:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def emit(self, name: str, **fields: Any) -> None:
        self.log.append(("event", name, fields))


class _Runtime:
    """What `tell` uses of a runtime: its events and the application's exception classes."""

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.events = _Events(self.log)

    def outcome_unknown(self, message: str) -> Exception:
        self.log.append(("raise", "unknown", message))
        return TransactionOutcomeUnknown(message)

    def failover_succeeded(self, message: str, *, transaction_rolled_back: bool) -> Exception:
        self.log.append(("raise", "succeeded", transaction_rolled_back))
        return FailoverSucceeded(message, transaction_rolled_back=transaction_rolled_back)


@given(situations)
def test_the_application_is_told_after_the_events_with_the_driver_error_as_cause(
    s: outcome.Situation,
) -> None:
    decided = outcome.decide(s)
    if not decided.fail_over_now:
        return
    exc = ConnectionResetError("reset by peer")
    told = _recovery.answer(decided, call=s.call, exc=exc, old="i-1", new="i-2", after=0.5)
    runtime = _Runtime()
    if told.error is None:
        _recovery.tell(told, runtime, exc)  # returns: the call runs again
        assert [entry[0] for entry in runtime.log] == ["event"] * len(told.events)
        return
    expected = TransactionOutcomeUnknown if told.error == "outcome_unknown" else FailoverSucceeded
    with pytest.raises(expected) as raised:
        _recovery.tell(told, runtime, exc)
    assert raised.value.__cause__ is exc
    assert str(raised.value) == told.message
    kinds = [entry[0] for entry in runtime.log]
    assert kinds == ["event"] * len(told.events) + ["raise"]  # every event before the error
    if isinstance(raised.value, FailoverSucceeded):
        assert raised.value.transaction_rolled_back == told.transaction_rolled_back
